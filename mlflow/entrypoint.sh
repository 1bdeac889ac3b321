#!/bin/sh
# Starts the tracking server from environment variables (set by docker-compose.yml from .env).
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?postgresql://user:password@host:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?s3://bucket/path}"
exec mlflow server \
  --host 0.0.0.0 --port 5000 \
  --workers "${MLFLOW_WORKERS:-2}" \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}"
