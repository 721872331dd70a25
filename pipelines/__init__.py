"""interest-migration: the importable package behind the Airflow DAGs.

Nothing happens at import time; every step is a function in a stage module (sources,
validation, preprocess, encoding, model, train, evaluate, registry, scoring) reachable from
``python -m pipelines <step>``.
"""

__version__ = "0.1.0"
