"""`make demo` starts each DAG once: unpausing a DAG for the demo adds no catch-up run of a missed slot.

A paused DAG whose schedule slot has passed (catchup=False still runs the latest missed slot) gets that run
from the scheduler the moment it is unpaused; the demo's own run then waited behind it: two trainings.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pipelines.orchestration.api import AirflowApi
from pipelines.settings import Settings

# Untouched by the other tests of the session's Airflow (they use reindex_documents, or dag.test() elsewhere),
# so it is still paused with its latest quarterly slot missed, as on a fresh clone.
DAG_ID = "retrain_lora"
# Long enough for the DAG processor to re-parse (refresh 20 s) and the scheduler to pass its loop repeatedly.
SETTLE_S = 45


def _runs(api: AirflowApi) -> list[dict]:
    return list(api.call("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"])


def _wait(condition, what: str, timeout_s: float = 180):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(2)
    raise AssertionError(f"{what} within {timeout_s:.0f}s")


def test_unpausing_for_the_demo_starts_only_the_demos_run(airflow_stack: Settings) -> None:
    stack = airflow_stack
    api = AirflowApi(stack)
    api.wait_for_dag(DAG_ID)
    if _runs(api):  # a reused test state: start from the DAG as a fresh clone has it
        api.call("DELETE", f"/dags/{DAG_ID}")
        api.wait_for_dag(DAG_ID)  # the DAG processor adds it again, paused
    dag = api.call("GET", f"/dags/{DAG_ID}")
    due = datetime.fromisoformat(dag["next_dagrun_run_after"])
    assert dag["is_paused"] and due <= datetime.now(UTC) and not _runs(api), "precondition: paused, a slot missed"

    run_id = api.start_once(DAG_ID, {"steps": 1, "promotion_policy": "manual"})
    try:
        assert not api.call("GET", f"/dags/{DAG_ID}")["is_paused"]
        started = _wait(lambda: [r["dag_run_id"] for r in _runs(api) if r["state"] != "queued"], "a run started")
        assert started == [run_id], f"the scheduler started {started} (ours: {run_id})"
        # The scheduler counts ours against max_active_runs=1 and may create runs only once it ends:
        # end it, then give the scheduler and the DAG processor time to add a catch-up run if they would.
        api.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"})
        time.sleep(SETTLE_S)
        runs = _runs(api)
        assert [r["dag_run_id"] for r in runs] == [run_id], [(r["dag_run_id"], r["run_type"]) for r in runs]
        upcoming = datetime.fromisoformat(api.call("GET", f"/dags/{DAG_ID}")["next_dagrun_run_after"])
        assert upcoming > datetime.now(UTC), f"the missed slot is still due: {upcoming}"
    finally:
        api.call("PATCH", f"/dags/{DAG_ID}", json={"is_paused": True})
        for run in _runs(api):  # no training left running for the next tests
            if run["state"] in {"queued", "running"}:
                api.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
