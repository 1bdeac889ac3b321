"""
### Ingest data drops

Always on (`@continuous`, one run at a time): **wait_for_drop** defers to the triggerer, which watches
the drop folders without holding a worker slot:

| drop folder (`PIPELINES_DROP_DIR`, default `state/drops/`) | lands in | asset updated | starts |
|---|---|---|---|
| `documents/` | `data/documents/` | `documents` | `reindex_documents` |
| `training/` | `data/training/` | `training_data` | `retrain_lora` |

A file counts as complete when a marker `<name>.done` sits next to it, or when its size and mtime have not
changed for `DROP_SETTLE_SECONDS` (default 30 s). Hidden names and `*.tmp`, `*.part`, `*.partial` are
never taken, so a drop still being written never starts a run on half a file.

**ingest_documents** / **ingest_training** copy each complete file into the data location under a hidden
name, rename it into place and delete it from the drop folder; the asset event's *extra* lists the files.
A kind with nothing dropped is *skipped* and updates no asset. After six quiet hours the run ends and the
next one starts watching again.

Drop from a shell with `pipelines drop PATH...`, or push: `POST /api/v2/assets/events` (see the README).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

from pipelines.orchestration.assets import DOCUMENTS_ASSET, TRAINING_DATA_ASSET
from pipelines.orchestration.drop_sensor import DropSensor, Found


@dag(
    dag_id="ingest_drops",
    description="Watch the drop folders; move complete drops into the data and update the assets",
    doc_md=__doc__,
    schedule="@continuous",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one watcher: two would race for the same files
    is_paused_upon_creation=False,  # a paused watcher silently ignores drops
    tags=["drops", "assets", "always-on"],
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=30),
    },
)
def ingest_drops() -> None:
    found = DropSensor(task_id="wait_for_drop", idle_after=timedelta(hours=6))

    @task(outlets=[Asset(**DOCUMENTS_ASSET)])
    def ingest_documents(found: Found) -> list[str]:
        from pipelines.orchestration.drop_sensor import ingest_and_announce

        return ingest_and_announce("documents", found, get_current_context())

    @task(outlets=[Asset(**TRAINING_DATA_ASSET)])
    def ingest_training(found: Found) -> list[str]:
        from pipelines.orchestration.drop_sensor import ingest_and_announce

        return ingest_and_announce("training", found, get_current_context())

    ingest_documents(found.output)
    ingest_training(found.output)


ingest_drops()
