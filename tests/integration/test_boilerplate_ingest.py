"""Page chrome is never indexed (issue 14 item 5), against the real Weaviate and MLflow.

Indexes the 5 shared reports that carry the share bar inline ("Save It For Later ... Download Article")
plus 3 that do not: enough documents for the cross-document rule, a fifth of the embedding cost of all 42.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests_support import write_reports

from pipelines.knowledge import index as idx
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHROME = ("Save It For Later", "Download Article", "Manage Subscriptions")


def _reports() -> list[dict]:
    text = (ROOT / "data/documents/business-reports.jsonl").read_text()
    rows = [json.loads(line) for line in text.split("\n") if line]
    carrying = [r for r in rows if "Save It For Later" in r["text"]]
    assert len(carrying) == 5
    return carrying + [r for r in rows if r not in carrying][:3]


def _indexed_texts(settings: Settings) -> list[str]:
    with idx.connect(settings) as client:
        collection = client.collections.use(settings.collection_alias)
        return [str(o.properties["text"]) for o in collection.iterator(return_properties=["text"])]


def test_no_indexed_chunk_carries_page_chrome_and_the_run_reports_the_cut(kb: Settings, embedder: Embedder) -> None:
    import mlflow

    write_reports(kb.data_dir / "documents", _reports())
    report = run_reindex(kb, embedder=embedder)
    texts = _indexed_texts(kb)
    assert report.accepted and len(texts) > 8
    assert not [t for t in texts if any(chrome in t for chrome in CHROME)]
    assert any("370 billion" in t for t in texts)  # the retail-banking report's content is still there
    counts = report.summary()["counts"]
    assert counts["boilerplate_docs_cleaned"] >= 5 and counts["boilerplate_chars_removed"] > 5 * 150
    run = mlflow.get_run(report.run_id)
    assert run.data.metrics["boilerplate_docs_cleaned"] == counts["boilerplate_docs_cleaned"]
    assert run.data.params["boilerplate_min_documents"] == str(kb.boilerplate_min_documents)
    again = run_reindex(kb, embedder=embedder)  # the same cut every run: nothing changes, nothing is re-embedded
    assert again.index.counts["docs_unchanged"] == 8 and again.index.chunks_embedded == 0
