"""The task bodies of the DAGs: one function per Airflow task, so every task is a single call.

``training`` serves ``interest_migration_training``, ``scoring`` serves ``interest_migration_scoring``;
``cli`` runs the training tasks in one process (``python -m pipelines training``).
"""
