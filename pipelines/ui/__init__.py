"""Airflow UI extension (registered through the ``airflow.plugins`` entry point in pyproject.toml)."""
