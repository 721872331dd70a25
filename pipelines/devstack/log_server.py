"""Airflow's log server bound to one address: ``python -m pipelines.devstack.log_server HOST PORT``.

Airflow's own ``serve-logs`` (started inside the scheduler, triggerer and Celery worker) listens
on every interface with no option to change it. The stacks start those components with
``--skip-serve-logs`` and run the same application (``airflow.utils.serve_logs.log_server``, which
accepts only requests signed with ``[api] secret_key``) here instead, on a loopback address. It is
the only process of a worker that holds that key.

``hostname()`` is the ``[core] hostname_callable`` of the stacks' components: it returns
``AIRFLOW_STACK_HOSTNAME`` (set per process by the stack: the address its logs are served on),
so the API server fetches a running task's log from the right worker, and task instances show
which worker ran them.
"""

from __future__ import annotations

import os
import socket
import sys

HOSTNAME_VAR = "AIRFLOW_STACK_HOSTNAME"  # set by the stack per process; read by hostname() only


def hostname() -> str:
    """The hostname a stack process reports to Airflow (falls back to the machine's FQDN)."""
    return os.environ.get(HOSTNAME_VAR) or socket.getfqdn()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m pipelines.devstack.log_server HOST PORT", file=sys.stderr)
        return 2
    import uvicorn
    from setproctitle import setproctitle

    setproctitle(f"airflow serve-logs {args[0]}:{args[1]}")
    uvicorn.run("airflow.utils.serve_logs.log_server:get_app", host=args[0], port=int(args[1]), factory=True,
                log_level="warning", log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
