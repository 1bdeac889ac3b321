"""Paired timing of the daily incremental cases: this tree's index step against another tree's.

    python bench/incremental_pair.py --runs 5            # times this checkout
    PYTHONPATH=/path/to/other/checkout python bench/incremental_pair.py --runs 5

Builds the shared corpus once into a fresh collection (vectors from the cache), then alternates an
unchanged re-run and a run where 1 % of the documents are rewritten, `--runs` times each, timing the
index step plus, where the code has one, the commit that makes the run visible to readers (the
retrieval gate is not timed: both trees run the same one). Prints medians and writes JSON to
`bench/results/incremental_pair-<label>.json`. Run two checkouts alternately for a paired comparison.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from dataclasses import replace
from pathlib import Path

from benchkit import scratch_dir

import pipelines
from pipelines.knowledge import index as idx
from pipelines.knowledge import reindex
from pipelines.knowledge.documents import load_documents
from pipelines.knowledge.embedding import Embedder
from pipelines.settings import get_settings
from pipelines.tracking import tracked_run

ROOT = Path(__file__).resolve().parent.parent


def timed_run(settings, documents, embedder, full: bool) -> float:  # type: ignore[no-untyped-def]
    with tracked_run(settings, settings.reindex_experiment) as run:
        run_id = run.info.run_id
    run_dir = settings.state_dir / "runs" / run_id
    reindex.stage_documents(run_dir / "documents.jsonl", documents)
    (run_dir / "quarantined.json").write_text("[]")
    started = time.perf_counter()
    if hasattr(reindex, "commit_index"):  # staged generations: index, then commit (readers switch)
        with idx.connect(settings) as client:  # one connection, as the direct path's index step has
            result = reindex.index_step(
                settings, run_id, full_rebuild=full, embedder=embedder, allow_mass_change=True, client=client
            )
            reindex.commit_index(settings, run_id, result, client)
    else:  # writes straight into the live collection
        result = reindex.index_step(settings, run_id, full_rebuild=full, embedder=embedder)
        if full:
            with idx.connect(settings) as client:
                idx.point_alias(client, settings.collection_alias, result.collection)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--label", default=None)
    args = parser.parse_args()
    label = args.label or ("staged" if hasattr(reindex, "commit_index") else "direct")
    base = get_settings()
    documents, _ = load_documents(str(ROOT / "data" / "documents"))
    embedder = Embedder(base.embedding_model_path, base.embedding_batch_size)
    settings = base.model_copy(
        update={
            "state_dir": scratch_dir("bench-pair-"),
            "collection_alias": f"Pair{uuid.uuid4().hex[:6]}",
            "vector_cache_file": ROOT / "bench" / "results" / ".vectors.sqlite",
            "reindex_experiment": "bench-incremental-pair",
        }
    )
    timed_run(settings, documents, embedder, full=True)
    rng = random.Random(7)
    picked = rng.sample(range(len(documents)), max(1, round(len(documents) * 0.01)))
    changed = list(documents)
    for i in picked:
        changed[i] = replace(changed[i], text=changed[i].text.replace(". ", ". Indeed, "))
    noop, one_pct = [], []
    current = documents
    for _ in range(args.runs):
        current = changed if current is documents else documents  # rewrite 1 % (or rewrite it back)
        one_pct.append(timed_run(settings, current, embedder, full=False))
        noop.append(timed_run(settings, current, embedder, full=False))
    with idx.connect(settings) as client:
        for name in idx.versions(client, settings.collection_alias):
            client.collections.delete(name)
        client.alias.delete(alias_name=settings.collection_alias)
    out = {
        "label": label,
        "code": str(Path(pipelines.__file__).parent),
        "documents": len(documents),
        "changed_documents": len(picked),
        "unchanged_rerun_s": noop,
        "one_pct_s": one_pct,
        "unchanged_rerun_median_s": statistics.median(noop),
        "one_pct_median_s": statistics.median(one_pct),
    }
    print(json.dumps({k: v for k, v in out.items() if "median" in k or k == "label"}))
    path = ROOT / "bench" / "results" / f"incremental_pair-{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*runs, out], indent=2))


if __name__ == "__main__":
    main()
