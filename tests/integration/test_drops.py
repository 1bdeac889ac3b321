"""Data drops through the real stack: files landing in a drop folder start runs, nobody presses a button."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import sample_reports, wait_until_idle

from pipelines.orchestration.api import AirflowApi
from pipelines.settings import Settings

RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def api(airflow_stack: Settings) -> Iterator[AirflowApi]:
    """The stack's Airflow with the watcher running and reindex_documents unpaused (paused again after)."""
    api = AirflowApi(airflow_stack)
    for dag_id in ("ingest_drops", "reindex_documents"):
        api.wait_for_dag(dag_id)
    assert not api.call("GET", "/dags/ingest_drops")["is_paused"], "the watcher must run without anyone unpausing it"
    api.unpause("reindex_documents")
    wait_until_idle(api, "reindex_documents")  # unpausing starts the latest missed daily run
    try:
        yield api
    finally:
        api.call("PATCH", "/dags/reindex_documents", json={"is_paused": True})


def _new_documents(tag: str, n: int = 2) -> str:
    rows = [{**row, "_id": f"{tag}-{i}", "title": f"{row['title']} ({tag})"} for i, row in enumerate(sample_reports(n))]
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _runs(api: AirflowApi, dag_id: str, since: str) -> list[dict]:
    params = {"run_after_gte": since, "order_by": "run_after", "limit": 100}
    return api.call("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]


def _wait_for_runs(api: AirflowApi, dag_id: str, since: str, count: int, state: str = "success") -> list[dict]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = _runs(api, dag_id, since)
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        assert not failed, f"{dag_id} runs failed: {failed}; see the task logs in the Airflow UI"
        if len(runs) >= count and all(r["state"] == state for r in runs[:count]):
            return runs[:count]
        time.sleep(3)
    raise AssertionError(f"{count} {dag_id} run(s) did not reach {state}: {_runs(api, dag_id, since)}")


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _asset_events(api: AirflowApi, name: str, since: str) -> list[dict]:
    asset_id = next(a["id"] for a in api.call("GET", "/assets", params={"name_pattern": name})["assets"])
    params = {"asset_id": asset_id, "timestamp_gte": since, "order_by": "timestamp"}
    return api.call("GET", "/assets/events", params=params)["asset_events"]


def _pipelines(*args: str) -> subprocess.CompletedProcess[str]:
    cli = str(Path(sys.executable).parent / "pipelines")
    return subprocess.run([cli, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=120)


def test_a_file_dropped_into_the_documents_folder_leads_to_a_successful_reindex(
    api: AirflowApi, stack: Settings
) -> None:
    since = _now()
    drop = stack.documents_drop_dir / "drop-one.jsonl"
    drop.parent.mkdir(parents=True, exist_ok=True)
    body = _new_documents("drop-one")
    half = len(body) // 2
    drop.write_text(body[:half])  # a writer that is not finished yet, and writes no marker
    time.sleep(3 * stack.drop_poll_s)
    assert drop.exists() and not (stack.data_dir / "documents" / drop.name).exists(), "half a file was ingested"
    assert not _runs(api, "reindex_documents", since), "a run started on half a file"
    with drop.open("a") as out:
        out.write(body[half:])
    drop.with_name(drop.name + ".done").touch()

    [run] = _wait_for_runs(api, "reindex_documents", since, 1)
    assert run["run_type"] == "asset_triggered"
    assert (stack.data_dir / "documents" / drop.name).read_text() == body
    assert not any(stack.documents_drop_dir.iterdir()), "the drop folder is left empty"
    events = api.call("GET", f"/dags/reindex_documents/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
    extras = [e["extra"] for e in events["asset_events"]]
    assert any(e.get("files") == [drop.name] and e.get("kind") == "documents" for e in extras), extras


def test_two_quick_drops_give_serialized_runs(api: AirflowApi, stack: Settings, tmp_path: Path) -> None:
    since = _now()
    first, second = tmp_path / "drop-two.jsonl", tmp_path / "drop-three.jsonl"
    first.write_text(_new_documents("drop-two"))
    second.write_text(_new_documents("drop-three"))
    placed = _pipelines("drop", "--via-drop-folder", str(first))
    assert placed.returncode == 0, placed.stderr
    deadline = time.monotonic() + 180
    while not any(r["state"] == "running" for r in _runs(api, "reindex_documents", since)):
        assert time.monotonic() < deadline, "the first drop started no run"
        time.sleep(1)
    pushed = _pipelines("drop", str(second))  # straight into the data, plus a REST asset event
    assert pushed.returncode == 0, pushed.stderr
    assert "asset event" in pushed.stdout

    runs = _wait_for_runs(api, "reindex_documents", since, 2)
    assert runs[1]["start_date"] >= runs[0]["end_date"], f"runs overlapped: {runs}"
    assert api.call("GET", "/pools/weaviate_writer")["slots"] == 1
    sources = [e["extra"].get("source") for e in _asset_events(api, "documents", since)]
    assert sources[-1] == "pipelines drop" and sources.count("pipelines drop") == 1, sources


def test_a_training_drop_updates_the_training_data_asset(api: AirflowApi, stack: Settings, tmp_path: Path) -> None:
    since = _now()
    source = tmp_path / "train.jsonl"  # training drops replace one of the files the trainer reads
    source.write_text((stack.training_data_dir / "train.jsonl").read_text())
    assert _pipelines("drop", "--kind", "training", "--via-drop-folder", str(source)).returncode == 0
    refused = _pipelines("drop", "--kind", "training", str(tmp_path / "train.jsonl"), str(_other(tmp_path)))
    assert refused.returncode == 1 and "training drops replace train.jsonl" in refused.stderr

    deadline = time.monotonic() + 120
    while not (events := _asset_events(api, "training_data", since)):
        assert time.monotonic() < deadline, "no training_data asset event"
        time.sleep(2)
    assert events[0]["extra"]["files"] == ["train.jsonl"]
    assert events[0]["source_dag_id"] == "ingest_drops"
    assert (stack.training_data_dir / "train.jsonl").read_text() == source.read_text()


def _other(folder: Path) -> Path:
    path = folder / "notes.jsonl"
    path.write_text("{}\n")
    return path


def test_drop_without_a_reachable_api_fails_with_a_clear_message(stack: Settings, tmp_path: Path) -> None:
    source = tmp_path / "x.jsonl"
    source.write_text(_new_documents("unreachable", 1))
    env = {**os.environ, "AIRFLOW_API_URL": "http://127.0.0.1:9", "PIPELINES_DATA_DIR": str(tmp_path / "data")}
    cli = str(Path(sys.executable).parent / "pipelines")
    result = subprocess.run([cli, "drop", str(source)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "could not emit the documents asset event" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
