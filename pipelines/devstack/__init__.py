"""Developer tooling, not the product: the embedded stack behind ``make up`` and ``make run``, and
the team stack behind ``make up-team`` (PostgreSQL, Redis, CeleryExecutor with two workers, state in
``.local/team/``; docs/deployment.md).

SeaweedFS (S3), MLflow and Airflow 3 run as local processes on 127.0.0.1, with every piece of
state under one git-ignored folder (``.local/`` in the repository root, or ``IM_STACK_ROOT_DIR``)::

    .local/seaweedfs/        S3 data (bucket ``IM_BUCKET``, default ``interest-migration``)
    .local/mlflow/mlflow.db  MLflow backend store (artifacts go to s3://<bucket>/mlflow-artifacts)
    .local/airflow/          AIRFLOW_HOME (SQLite metadata DB, task logs); DAGs from the repo's dags/
    .local/logs/*.log        one log per service process
    .local/secrets/          0700 (like .local/ itself); generated credentials, each file 0600, and the
                             files servers read them from (MLflow auth config, SeaweedFS security.toml)
    .local/stack.json        process ids, start times and ports, so `down`/`status` know what to stop
    .local/stack.env         0600; `source` it to run `python -m pipelines ...` (or `airflow ...`) against the stack

**Linux only**: finding and ending the stack's processes reads ``/proc``. No product
stage imports this package; the test suite uses :mod:`.services` to start SeaweedFS and MLflow.

Modules, one job each:

- :mod:`.config`: :class:`~.config.StackConfig` (folder, repo, ports) from the settings; ``StackError``
- :mod:`.credentials`: generated secrets in 0600 files, the Airflow admin password
- :mod:`.environment`: the environment handed to the services and written to ``stack.env``
- :mod:`.processes`: ``/proc`` bookkeeping: find and end the stack's processes
- :mod:`.state`: ``stack.json``, what the running stack was started with
- :mod:`.services`: start and stop SeaweedFS (JWT keys, no WebDAV/telemetry) and MLflow (basic auth)
- :mod:`.backends`: the team stack's PostgreSQL and Redis
- :mod:`.topology`: which Airflow processes a stack runs, with which command (docker-compose.yml too)
- :mod:`.log_server`: Airflow's log server bound to a loopback address; the stacks' hostname callable
- :mod:`.airflow_api`: the Airflow REST client (token, readiness, runs, backfills, task logs)
- :mod:`.lifecycle`: ``up``, ``down``, ``status``
- :mod:`.demo`: the ``make run`` driver (data, training, scoring backfill, summary)
- :mod:`.compose_env`, :mod:`.compose_init`: docker-compose.yml's generated ``.env`` and one-shot jobs
- :mod:`.cli`: ``python -m pipelines stack up|down|status|env|run|compose-env`` (``--team``)
"""
