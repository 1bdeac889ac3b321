"""DAG-run notes: the MLflow run's link on the Airflow run's page."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pipelines.settings import Settings

log = logging.getLogger(__name__)


def note_mlflow_run(settings: Settings, context: Mapping[str, Any], mlflow_run_id: str) -> str | None:
    """Write the MLflow run's URL into the Airflow run's note, shown on the run's page in the Airflow UI.

    Best effort: a run started by `dag.test()`, or an API server out of reach, only costs the note
    (a warning in the task log); the MLflow run carries the Airflow run id as a tag either way.
    """
    import requests

    from pipelines.orchestration.api import AirflowApi, AirflowApiError
    from pipelines.tracking import run_link

    url = run_link(settings, mlflow_run_id)
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    try:
        AirflowApi(settings).call(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}",
            params={"update_mask": "note"},
            json={"note": f"MLflow run: {url}"},
        )
    except (AirflowApiError, requests.RequestException) as err:
        log.warning("could not note the MLflow run on %s/%s: %s", dag_id, run_id, err)
        return None
    return url
