#!/bin/bash
# Run once by the postgres image on an empty volume: a database and role for the answering
# service's feedback (pipelines.serving.feedback creates its table). Password from .env.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE feedback LOGIN PASSWORD '${FEEDBACK_DB_PASSWORD}';
CREATE DATABASE feedback OWNER feedback;
SQL
