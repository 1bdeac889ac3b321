"""The local development stack (Weaviate, MLflow, Airflow as local processes); not used in production."""
