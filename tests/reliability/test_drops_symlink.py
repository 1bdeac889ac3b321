"""The always-on drop watcher refuses a symlink to a secret: nothing copied, the refusal reported."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pipelines.orchestration.api import AirflowApi
from pipelines.settings import Settings


def test_symlink_dropped_into_the_folder_is_refused_and_reported(airflow_stack: Settings, tmp_path: Path) -> None:
    stack = airflow_stack
    api = AirflowApi(stack)
    api.wait_for_dag("ingest_drops")
    secret = tmp_path / "secrets.env"
    secret.write_text("WEAVIATE_API_KEY=abcdefghijklmnopqrstuvwxyz012345\n")
    drop_dir = stack.documents_drop_dir
    drop_dir.mkdir(parents=True, exist_ok=True)
    name = f"notes-{int(time.time())}.txt"
    (drop_dir / name).symlink_to(secret)
    (drop_dir / f"{name}.done").touch()
    reports_dir = stack.quarantine_dir / "drops"
    deadline = time.monotonic() + 300
    refused: dict[str, str] = {}
    while time.monotonic() < deadline and name not in refused:
        for report in reports_dir.glob("*.json") if reports_dir.exists() else []:
            refused.update({r["name"]: r["reason"] for r in json.loads(report.read_text())["refused"]})
        time.sleep(2)
    print("refusals:", refused)
    assert "symbolic link" in refused.get(name, ""), "the watcher never reported the refused link"
    data_copy = Path(stack.documents_location) / name
    assert not data_copy.exists(), "the link's target was copied into the documents"
    assert not (drop_dir / name).is_symlink(), "the refused link stays in the drop folder, to be refused again"
    aside = [p for p in (drop_dir / ".refused").rglob(name) if p.is_symlink()]
    assert aside, "the link is kept aside for a person"
    assert secret.read_text().startswith("WEAVIATE_API_KEY=")
    shutil.rmtree(aside[0].parent)  # other tests expect an empty drop folder
    if not any((drop_dir / ".refused").iterdir()):
        (drop_dir / ".refused").rmdir()
