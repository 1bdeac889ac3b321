"""Retrieval before and after boilerplate removal at ingest (issue 14 item 5).

    WEAVIATE_HTTP_PORT=... MLFLOW_PORT=... PIPELINES_STATE_DIR=/tmp/x python bench/boilerplate_retrieval.py

Indexes the shared reports (data/documents) twice through the real re-index run, into two
fresh collections: once with cleaning switched off (BOILERPLATE_MIN_DOCUMENTS above the corpus
size) and once with the default rule; measures each on the golden set (data/golden) and counts
the chunks that still carry the share bar. Starts Weaviate and MLflow if they are not running.
Writes bench/results/boilerplate_retrieval.json. Retrieval metrics are deterministic, so one
run of each suffices; the machine was shared with other agents (timings are not compared).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

from benchkit import load_note

from pipelines.devstack import stack
from pipelines.knowledge import index as idx
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
CHROME = ("Save It For Later", "Download Article", "Manage Subscriptions")


def chunks_with_chrome(settings: Settings) -> dict[str, int]:
    """How many live chunks contain each chrome string."""
    with idx.connect(settings) as client:
        target = client.collections.use(settings.collection_alias)
        texts = [str(o.properties["text"]) for o in target.iterator(return_properties=["text"])]
    return {s: sum(s in t for t in texts) for s in CHROME} | {"chunks": len(texts)}


def run_case(base: Settings, name: str, min_documents: int, embedder: Embedder, work: Path) -> dict[str, object]:
    data = work / name / "data"
    shutil.copytree(ROOT / "data" / "documents", data / "documents")
    shutil.copytree(ROOT / "data" / "golden", data / "golden")
    tag = uuid.uuid4().hex[:6]
    settings = base.model_copy(
        update={
            "data_dir": data,
            "state_dir": work / name / "state",
            "collection_alias": f"Boiler{name.title()}{tag}",
            "reindex_experiment": f"bench-boilerplate-{name}-{tag}",
            "boilerplate_min_documents": min_documents,
        }
    )
    report = run_reindex(settings, full_rebuild=True, embedder=embedder)
    summary = report.summary()
    return {
        "boilerplate_min_documents": min_documents,
        "metrics": summary["metrics"],
        "cleaning": {k: v for k, v in summary["counts"].items() if k.startswith("boilerplate_")},
        "chunks_with_chrome": chunks_with_chrome(settings),
    }


def main() -> None:
    base = get_settings()
    stack.up(base, with_airflow=False)
    embedder = Embedder(base.embedding_model_path, base.embedding_batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-boilerplate-") as tmp:
        cases = {
            "before": run_case(base, "before", 10**9, embedder, Path(tmp)),
            "after": run_case(base, "after", base.boilerplate_min_documents, embedder, Path(tmp)),
        }
    keys = ("hybrid_ndcg_at_10", "hybrid_recall_at_10", "hybrid_mrr", "bm25_ndcg_at_10", "vector_ndcg_at_10")
    delta = {
        k: round(float(cases["after"]["metrics"][k]) - float(cases["before"]["metrics"][k]), 4)  # type: ignore[index]
        for k in keys
    }
    result = {
        "command": "python bench/boilerplate_retrieval.py",
        "corpus": "data/documents/business-reports.jsonl (42 reports)",
        "golden_set": "data/golden",
        "machine_note": f"only deterministic retrieval metrics are compared; {load_note()}",
        **cases,
        "delta_after_minus_before": delta,
    }
    out = ROOT / "bench" / "results" / "boilerplate_retrieval.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
