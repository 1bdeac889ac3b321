"""Building small document sets for the re-indexing tests, and child-process environments."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "documents" / "business-reports.jsonl"


def sample_reports(n: int) -> list[dict]:
    rows = [json.loads(line) for line in SAMPLE.read_text().split("\n") if line.strip()]
    return rows[:n]


def write_reports(documents_dir: Path, rows: list[dict], name: str = "reports.jsonl") -> None:
    documents_dir.mkdir(parents=True, exist_ok=True)
    with (documents_dir / name).open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def wait_until_idle(api, dag_id: str, timeout_s: float = 900) -> None:  # type: ignore[no-untyped-def]
    """Until the DAG has no queued or running run, nor a due run the scheduler has yet to create.

    Unpausing a daily DAG with catchup=False starts its latest missed run; tests wait it out.
    """
    import time
    from datetime import UTC, datetime

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        due = api.call("GET", f"/dags/{dag_id}").get("next_dagrun_run_after")
        overdue = due is not None and datetime.fromisoformat(due) <= datetime.now(UTC)
        active = api.call("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"]})
        if not overdue and not active["total_entries"]:
            return
        time.sleep(5)
    raise AssertionError(f"{dag_id} still busy after {timeout_s:.0f}s")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment under which a child process reads exactly these settings."""
    env = dict(os.environ)
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if field.alias and value is not None:
            # pydantic-settings reads lists and dicts from JSON, everything else from its text.
            env[field.alias] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    env.update(extra)
    return env


def create_text_collection(client: Any, name: str) -> Any:
    """A bare collection with one text property and vectors supplied by the caller (probes of Weaviate itself)."""
    from weaviate.classes.config import Configure, DataType, Property

    return client.collections.create(
        name,
        properties=[Property(name="text", data_type=DataType.TEXT)],
        vector_config=Configure.Vectors.self_provided(),
    )
