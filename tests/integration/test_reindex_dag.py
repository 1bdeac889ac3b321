"""The reindex_documents DAG end to end with dag.test(), against the real services."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests_support import sample_reports, write_reports

from pipelines.knowledge import index as idx
from pipelines.settings import Settings, get_settings

DAGS = Path(__file__).resolve().parents[2] / "dags"


def _env_for(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks read settings from the environment, as they do under a real scheduler."""
    for var, value in {
        "PIPELINES_DATA_DIR": settings.data_dir,
        "PIPELINES_STATE_DIR": settings.state_dir,
        "WEAVIATE_COLLECTION": settings.collection_alias,
        "REINDEX_EXPERIMENT": settings.reindex_experiment,
        "VECTOR_CACHE_PATH": settings.vector_cache_path,
        "RETRIEVAL_TOLERANCE": settings.retrieval_tolerance,
        # The stack's key file lives in the stack's state folder, not the knowledge base's.
        "WEAVIATE_API_KEY_FILE": settings.weaviate_api_key_file,
    }.items():
        monkeypatch.setenv(var, str(value))
    get_settings.cache_clear()


def test_reindex_documents_dag_runs_end_to_end(kb: Settings, airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    write_reports(kb.data_dir / "documents", sample_reports(5))
    _env_for(kb, monkeypatch)
    dag = DagBag(dag_folder=str(DAGS / "reindex_documents.py")).get_dag("reindex_documents")
    try:
        run = dag.test(run_conf={"full_rebuild": True})
    finally:
        get_settings.cache_clear()
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"validate": "success", "version": "success", "index": "success", "evaluate": "success"}
    with idx.connect(kb) as client:
        target = idx.alias_target(client, kb.collection_alias)
        assert target is not None and idx.count_objects(client, target) > 5
