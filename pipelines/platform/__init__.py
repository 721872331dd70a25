"""The edges every stage shares: object storage, the bucket layout, MLflow tracking and dates.

Only :mod:`~pipelines.platform.storage` talks to S3 (boto3) and only
:mod:`~pipelines.platform.tracking` builds MLflow clients; every key in the bucket is built by
:mod:`~pipelines.platform.layout`.
"""
