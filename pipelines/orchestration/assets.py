"""Airflow Assets: the data that starts runs when it changes.

Kept as plain names and URIs so `pipelines` never needs Airflow to import;
DAG files build `airflow.sdk.Asset(name=..., uri=...)` from these.
"""

DOCUMENTS_ASSET = {"name": "documents", "uri": "file:///pipelines/data/documents"}
TRAINING_DATA_ASSET = {"name": "training_data", "uri": "file:///pipelines/data/training"}
