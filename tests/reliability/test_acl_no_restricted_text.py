"""No document text outside Weaviate, and Weaviate itself closed to anyone without the key."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import requests
from tests_support import sample_reports, write_reports

from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.settings import Settings

SECRET = "password = Hunter2-Zq9V7mXc4T2pLr8N"
RESTRICTED = "The Northwind merger closes on the ninth of March at forty-one dollars a share, says the board."


def _fragments(rows: list[dict]) -> list[str]:
    """Stretches of every document's text (and the secret) that must appear in no artifact."""
    found = ["Hunter2-Zq9V7mXc4T2pLr8N", "Northwind merger closes"]
    for row in rows:
        text = row["text"]
        middle = len(text) // 2
        found.append(text[middle : middle + 48])
    return found


def test_mlflow_artifacts_and_reports_hold_no_document_text(kb: Settings, embedder: Embedder, tmp_path: Path) -> None:
    import mlflow

    documents = kb.data_dir / "documents"
    rows = sample_reports(8)
    write_reports(documents, rows)
    (documents / "deploy.md").write_text(f"# Deploy notes\n\nFor the deploy use {SECRET} on every host.\n")
    (documents / "board.md").write_text(f"---\nacl: [board]\n---\n# Board paper\n\n{RESTRICTED}\n")
    report = run_reindex(kb, embedder=embedder)
    assert report.accepted, report.summary()
    quarantine_file = kb.quarantine_dir / f"{report.run_id}.json"
    reasons = {q["document"]: q["reason"] for q in json.loads(quarantine_file.read_text())["quarantine"]}
    assert reasons == {"deploy.md": "contains PII or a secret"}

    mlflow.set_tracking_uri(kb.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(run_id=report.run_id, dst_path=str(tmp_path / "artifacts")))
    files = [p for p in local.rglob("*") if p.is_file()] + [quarantine_file]
    names = sorted(str(p.relative_to(local)) for p in files if p.is_relative_to(local))
    print(f"{len(files)} files checked:", names)
    assert any("data_docs" in name for name in names), "the run must carry its Data Docs"
    leaks = [
        (str(path), fragment)
        for path in files
        for fragment in _fragments(rows)
        if fragment in path.read_text(errors="replace")
    ]
    assert not leaks, f"document text outside Weaviate: {leaks[:5]}"


def test_weaviate_refuses_anonymous_requests(stack: Settings) -> None:
    url = f"{stack.weaviate_http_url}/v1/objects"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Host": "evil.example"}, timeout=10).status_code == 401
    assert requests.get(f"{stack.weaviate_http_url}/v1/schema", timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer not-the-key"}, timeout=10).status_code == 401
    key = stack.weaviate_key
    assert key, "`up` must generate a key for the local Weaviate"
    assert requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    # The key file is the owner's alone, as is its folder.
    key_file = stack.weaviate_api_key_file
    assert key_file is not None
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_file.parent).st_mode) == 0o700


def test_weaviate_client_without_the_key_is_refused(stack: Settings) -> None:
    import weaviate
    from weaviate.exceptions import WeaviateBaseError

    with pytest.raises(WeaviateBaseError, match="401|nauthori"):
        client = weaviate.connect_to_local(
            host="127.0.0.1", port=stack.weaviate_http_port, grpc_port=stack.weaviate_grpc_port
        )
        try:
            client.collections.list_all()
        finally:
            client.close()
