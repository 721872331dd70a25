"""Privacy controls: pseudonymisation at landing, retention of old partitions, erasure of one user.

See docs/privacy.md: :mod:`pseudonym` (the keyed hash and its key), :mod:`retention` (the retention
DAG's work), :mod:`erasure` (``python -m pipelines forget``), :mod:`cli` (the commands).
"""
