"""
### Re-index documents into Weaviate

Runs **daily at 02:00 UTC**, and **whenever the `documents` asset is updated** (a drop
landed, or someone posted an asset event).

1. **validate** — load every document, run the Great Expectations gate; invalid documents go
   to the quarantine report, a batch over the hard limits stops here (the index is untouched).
2. **version** — `dvc add` + `dvc push` of the validated snapshot; hash and git revision tagged on the MLflow run.
3. **index** — reconciles the live collection with its manifest, then stages the update as a new generation
   readers do not see: only new or changed chunks are embedded, obsolete ones marked retired. A run that would
   delete or rewrite more than `MAX_CHANGE_SHARE` of the live documents stops here unless `allow_mass_change`
   is ticked. `full_rebuild` builds a new collection instead.
4. **evaluate** — nDCG@10 / Recall@10 / MRR on the golden set for hybrid, vector and BM25, measured on the staged
   generation; the gate compares with the last accepted run and the pinned reference run. Accepted: readers switch
   to the new generation (or the alias to the new collection) in one step. Rejected: the staged generation is
   deleted and readers never saw it.

Every task logs its MLflow run (experiment `reindex_documents`); roll back with `pipelines rollback-index`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.orchestration.assets import DOCUMENTS_ASSET

WRITER_POOL = "weaviate_writer"


@dag(
    dag_id="reindex_documents",
    description="Validate, version, incrementally re-index and evaluate the document collection",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=[Asset(**DOCUMENTS_ASSET)]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two drops in a row queue up: never two writers on one collection
    tags=["knowledge", "weaviate", "daily"],
    default_args={
        "owner": "knowledge-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "execution_timeout": timedelta(hours=2),
    },
    params={
        "full_rebuild": Param(
            False,
            type="boolean",
            title="Full rebuild",
            description="Build a new versioned collection and swap the alias if the quality gate passes.",
        ),
        "allow_mass_change": Param(
            False,
            type="boolean",
            title="Allow mass change",
            description="Let this run delete or rewrite more than MAX_CHANGE_SHARE of the live documents "
            "(recorded on the MLflow run). Leave unticked unless the drop is meant to replace the corpus.",
        ),
    },
)
def reindex_documents() -> None:
    @task(retries=0)
    def validate() -> str:
        from pipelines.knowledge.reindex import validate_step
        from pipelines.orchestration import RunOrigin, fail_fast
        from pipelines.settings import get_settings

        with fail_fast():
            return validate_step(get_settings(), RunOrigin.of(get_current_context()).tags())

    @task
    def version(mlflow_run_id: str) -> dict[str, str]:
        from pipelines.knowledge.reindex import version_step
        from pipelines.orchestration.run_notes import note_mlflow_run
        from pipelines.settings import get_settings

        note_mlflow_run(get_settings(), get_current_context(), mlflow_run_id)  # the run page links MLflow
        return version_step(get_settings(), mlflow_run_id)

    @task(pool=WRITER_POOL)
    def index(mlflow_run_id: str) -> dict:
        from dataclasses import asdict

        from pipelines.knowledge.reindex import index_step
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings

        params = get_current_context()["params"]
        full_rebuild, allow_mass_change = bool(params["full_rebuild"]), bool(params.get("allow_mass_change", False))
        with fail_fast():
            return asdict(index_step(get_settings(), mlflow_run_id, full_rebuild, allow_mass_change=allow_mass_change))

    @task(pool=WRITER_POOL, retries=0)
    def evaluate(mlflow_run_id: str, result: dict) -> dict:
        from pipelines.knowledge.reindex import IndexResult, evaluate_step
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings

        with fail_fast():
            return evaluate_step(get_settings(), mlflow_run_id, IndexResult(**result)).summary()

    mlflow_run_id = validate()
    indexed = index(mlflow_run_id)
    version(mlflow_run_id) >> indexed  # the snapshot is versioned before the index changes
    evaluate(mlflow_run_id, indexed)


reindex_documents()
