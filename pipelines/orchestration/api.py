"""A small client for Airflow 3's public REST API (token, unpause, trigger, wait)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipelines.settings import Settings

FINISHED = {"success", "failed"}

# A busy metadata database (SQLite locked, Postgres failover) answers 500/503 for a moment.
# Calls that are safe to repeat are retried with backoff; a trigger is not (it is not idempotent).
RETRY = Retry(
    total=6,
    backoff_factor=1.0,
    status_forcelist=(500, 502, 503, 504),
    allowed_methods=frozenset({"GET", "PATCH", "PUT", "DELETE"}),
    raise_on_status=False,
)


class AirflowApiError(RuntimeError):
    """The API refused a call, or a run did not finish as hoped."""


@dataclass(frozen=True)
class FinishedRun:
    """A DAG run that was started and watched to its end: what it was and where to look at it."""

    dag_id: str
    run_id: str
    state: str
    duration_s: float  # from the trigger, so including any wait in the queue
    url: str  # the run's page in the Airflow UI
    note: str  # the tasks note their MLflow run here ("MLflow run: <url>"); empty if none did


class AirflowApi:
    """Authenticated calls against `settings.airflow_url` (JWT from /auth/token)."""

    def __init__(self, settings: Settings, base_url: str | None = None) -> None:
        self.base = (base_url or settings.airflow_url).rstrip("/")
        response = requests.post(
            f"{self.base}/auth/token",
            json={"username": settings.airflow_admin_user, "password": settings.airflow_admin_password},
            timeout=30,
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"login to {self.base} failed: {response.status_code} {response.text[:200]}")
        self.session = requests.Session()
        self.session.mount(self.base, HTTPAdapter(max_retries=RETRY))
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout_s: float = 300) -> None:
        """Until the DAG processor has parsed the file and the API knows the DAG."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.call("GET", f"/dags/{dag_id}")
                return
            except AirflowApiError:
                time.sleep(3)
        raise AirflowApiError(f"DAG {dag_id} not parsed within {timeout_s:.0f}s")

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        note: str | None = None,
        logical_date: str | None = None,
    ) -> str:
        body: dict[str, Any] = {"logical_date": logical_date, "conf": dict(conf or {})}
        if note:
            body["note"] = note
        return str(self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout_s: float = 3600, echo: Callable[[str], None] = print
    ) -> str:
        """Poll until the run finishes; print task states as they change. Returns the final state."""
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            run = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            tasks = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
            progress = ", ".join(f"{t['task_id']}={t['state'] or 'none'}" for t in tasks)
            if progress != last:
                echo(f"  {dag_id}: {run['state']}  [{progress}]")
                last = progress
            if run["state"] in FINISHED:
                return str(run["state"])
            time.sleep(5)
        raise AirflowApiError(f"{dag_id} run {run_id} still running after {timeout_s:.0f}s")

    def start_once(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Trigger a run and leave the DAG unpaused, without the scheduler adding a catch-up run.

        A paused DAG whose latest schedule slot has passed gets that slot's run the moment it is unpaused
        (catchup=False still runs the latest missed slot), and a run triggered next waits behind it
        (max_active_runs=1): two trainings. So the run is triggered while the DAG is still paused, *at* the
        missed slot's logical date; once unpaused, the scheduler finds the slot taken and moves to the next.
        """
        dag = self.call("GET", f"/dags/{dag_id}")
        logical_date = None
        if dag["is_paused"] and dag.get("next_dagrun_run_after"):
            if datetime.fromisoformat(dag["next_dagrun_run_after"]) <= datetime.now(UTC):
                logical_date = dag["next_dagrun_logical_date"]
        run_id = self.trigger(dag_id, conf, logical_date=logical_date)
        if dag["is_paused"]:
            self.unpause(dag_id)
        return run_id

    def run_and_wait(self, dag_id: str, conf: Mapping[str, Any] | None = None, timeout_s: float = 3600) -> FinishedRun:
        """Start one run (`start_once`) and wait until it finishes, in whatever state."""
        self.wait_for_dag(dag_id)
        started = time.monotonic()
        run_id = self.start_once(dag_id, conf)
        state = self.wait_for_run(dag_id, run_id, timeout_s)
        run = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return FinishedRun(
            dag_id=dag_id,
            run_id=run_id,
            state=state,
            duration_s=time.monotonic() - started,
            url=f"{self.base}/dags/{dag_id}/runs/{run_id}",
            note=run.get("note") or "",
        )
