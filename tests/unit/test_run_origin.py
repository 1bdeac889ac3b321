"""RunOrigin: the only place a task context is read for who/which run; domain code gets its values."""

from __future__ import annotations

from types import SimpleNamespace

from pipelines.orchestration import RunOrigin


def test_origin_tags_link_the_mlflow_run_to_the_airflow_run() -> None:
    context = {"dag_run": SimpleNamespace(dag_id="retrain_lora", triggering_user_name="ana"), "run_id": "manual__1"}
    origin = RunOrigin.of(context)
    assert origin.tags() == {"airflow.dag_id": "retrain_lora", "airflow.run_id": "manual__1"}
    assert origin.actor == "ana via airflow retrain_lora/manual__1"


def test_origin_without_a_dag_run_names_an_unknown_user_and_sets_no_empty_tags() -> None:
    origin = RunOrigin.of({"run_id": "manual__2"})
    assert origin.tags() == {"airflow.run_id": "manual__2"}
    assert origin.actor == "unknown user via airflow ?/manual__2"
