"""The Airflow side of the pipelines: everything that knows Airflow exists.

`api` (REST client), `db` (metadata-database connect args, imported by Airflow itself),
`assets` (asset names and URIs), `drop_sensor` (drop trigger and sensor), `run_notes`
(the MLflow link on a run's page) and, here, the failure policy for tasks and `RunOrigin`.
`knowledge/` and `behaviour/` never import this package and never see a task context: DAG
tasks turn the context into typed requests and plain values. Airflow is imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@contextmanager
def fail_fast() -> Iterator[None]:
    """Turn deterministic failures into AirflowFailException so the task is not retried."""
    from pipelines.failures import DeterministicFailure

    try:
        yield
    except DeterministicFailure as err:
        from airflow.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class RunOrigin:
    """The Airflow run a task works for, read once from its context."""

    dag_id: str
    run_id: str
    triggered_by: str = ""  # the user who triggered the run, when Airflow knows one

    @classmethod
    def of(cls, context: Mapping[str, Any]) -> RunOrigin:
        """The origin of the running task (`get_current_context()`)."""
        dag_run = context.get("dag_run")
        user = getattr(dag_run, "triggering_user_name", None)
        return cls(str(getattr(dag_run, "dag_id", "") or ""), str(context.get("run_id") or ""), str(user or ""))

    def tags(self) -> dict[str, str]:
        """MLflow tags that link a run back to this Airflow run."""
        tags = {"airflow.dag_id": self.dag_id, "airflow.run_id": self.run_id}
        return {k: v for k, v in tags.items() if v}

    @property
    def actor(self) -> str:
        """Who moves a registry alias from this run, as recorded on the model version."""
        return f"{self.triggered_by or 'unknown user'} via airflow {self.dag_id or '?'}/{self.run_id or '?'}"
