#!/bin/bash
# Run once by the postgres image on an empty volume: a database and role for MLflow next to
# Airflow's. Passwords come from the environment (docker-compose.yml, from .env).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE mlflow LOGIN PASSWORD '${MLFLOW_DB_PASSWORD}';
CREATE DATABASE mlflow OWNER mlflow;
SQL
