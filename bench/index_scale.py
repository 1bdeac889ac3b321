"""Cost as the corpus grows: full rebuild, a 1 %-changed run, hybrid query latency and peak memory at 1x, 5x, 25x.

    python bench/index_scale.py [--scales 1 5 25] [--seed-cache state/index/vectors.sqlite]

Each scale runs in a fresh process (so its peak RSS is its own) on a fresh collection and state folder.
The scaled corpus is `k` editions of the 42 shared reports that differ only in document id: their chunks
are distinct Weaviate objects but share text, so the full rebuild takes every vector from the vector
cache. The full-rebuild time is therefore everything but the encoder (reading, chunking, planning,
writing, committing); the encoder's own rate is measured separately in each process, and a cold
rebuild adds chunks / rate. The 1 %-changed run rewrites 1 % of the documents with new text, so it
pays the encoder for real. Writes bench/results/index_scale.json and bench/results/index_scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
MACHINE_NOTE = (
    "load_average says how busy the machine was (above the core count, other jobs shared it and absolute "
    "seconds are inflated)"
)


def child(scale: int, seed_cache: Path | None) -> dict[str, Any]:
    """Measure one scale in this process."""
    import psutil

    from pipelines.knowledge import index as idx
    from pipelines.knowledge.chunking import chunk_document
    from pipelines.knowledge.documents import Document, load_documents
    from pipelines.knowledge.embedding import Embedder, VectorCache
    from pipelines.knowledge.reindex import (
        chunker_config,
        commit_index,
        discard_index,
        index_step,
        stage_documents,
        vectors_for,
    )
    from pipelines.knowledge.retrieval import Retriever
    from pipelines.settings import get_settings
    from pipelines.tracking import tracked_run

    base = get_settings()
    state = Path(tempfile.mkdtemp(prefix=f"bench-scale-{scale}x-"))
    settings = base.model_copy(
        update={
            "state_dir": state,
            "collection_alias": f"BenchScale{uuid.uuid4().hex[:6]}",
            "vector_cache_file": state / "vectors.sqlite",
            "reindex_experiment": "bench-index-scale",
        }
    )
    if seed_cache is not None and seed_cache.exists():
        shutil.copy(seed_cache, settings.vector_cache_path)
    shared, _ = load_documents(str(ROOT / "data" / "documents"))
    documents: list[Document] = list(shared)
    for k in range(1, scale):
        documents += [replace(d, id=f"{d.id}e{k}") for d in shared]
    chunker = chunker_config(settings)
    embedder = Embedder(settings.embedding_model_path, settings.embedding_batch_size)

    # Untimed: the shared texts' vectors into the cache; then the encoder's own rate on 128 of them.
    shared_chunks = [c for d in shared for c in chunk_document(d, chunker)]
    cache = VectorCache(settings.vector_cache_path)
    vectors_for(shared_chunks, embedder, cache)
    cache.close()
    sample = [c.embedding_text for c in shared_chunks[:128]]
    embedder.embed(sample[:16])
    started = time.perf_counter()
    embedder.embed(sample)
    encoder_rate = len(sample) / (time.perf_counter() - started)
    rss_before = psutil.Process().memory_info().rss

    def stage(docs: list[Document]) -> str:
        with tracked_run(settings, settings.reindex_experiment) as mlrun:
            run_id = str(mlrun.info.run_id)
        stage_documents(settings.state_dir / "runs" / run_id / "documents.jsonl", docs)
        (settings.state_dir / "runs" / run_id / "quarantined.json").write_text("{}")
        return run_id

    def run(docs: list[Document]) -> tuple[float, Any]:
        run_id = stage(docs)
        started = time.perf_counter()
        result = index_step(settings, run_id, embedder=embedder, allow_mass_change=True)
        commit_index(settings, run_id, result)
        return time.perf_counter() - started, result

    full_s, full = run(documents)
    rng = random.Random(7)
    n_changed = max(1, round(len(documents) * 0.01))
    picked = set(rng.sample(range(len(documents)), n_changed))
    changed = [replace(d, text=d.text.replace(". ", f". Indeed (scale {scale}), ")) if i in picked else d
               for i, d in enumerate(documents)]  # fmt: skip
    incr_s, incr = run(changed)

    queries = [json.loads(line)["text"] for line in (ROOT / "data/golden/queries.jsonl").read_text().splitlines()]
    latencies = []
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    # Untimed (tracemalloc slows allocation): the index step's own peak of Python and numpy allocations in one
    # more full rebuild of the same corpus, which is then discarded. This is what grows with the corpus.
    run_id = stage(documents)
    tracemalloc.start()
    traced = index_step(settings, run_id, full_rebuild=True, embedder=embedder, allow_mass_change=True)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    discard_index(settings, traced)
    with idx.connect(settings) as client:
        retriever = Retriever(client, embedder, settings.collection_alias, settings.hybrid_alpha)
        for query in queries[:5]:  # warm-up
            retriever.search(query, k=10)
        for query in queries * 2:
            started = time.perf_counter()
            retriever.search(query, k=10)
            latencies.append((time.perf_counter() - started) * 1000)
        for name in idx.versions(client, settings.collection_alias):
            client.collections.delete(name)
        client.alias.delete(alias_name=settings.collection_alias)
    shutil.rmtree(state, ignore_errors=True)
    return {
        "scale": scale,
        "documents": len(documents),
        "chunks": full.counts["chunks_to_write"],
        "full_rebuild_s": round(full_s, 3),
        "full_rebuild_embedded": full.chunks_embedded,
        "full_rebuild_steps_s": {k: round(v, 3) for k, v in full.timings_s.items()},
        "encoder_chunks_per_s": round(encoder_rate, 2),
        "cold_full_rebuild_encoder_s_at_that_rate": round(full.counts["chunks_to_write"] / encoder_rate, 1),
        "changed_1pct_documents": n_changed,
        "changed_1pct_s": round(incr_s, 3),
        "changed_1pct_embedded": incr.chunks_embedded,
        "changed_1pct_steps_s": {k: round(v, 3) for k, v in incr.timings_s.items()},
        "hybrid_queries": len(latencies),
        "hybrid_latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "hybrid_latency_p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "rss_before_runs_mib": round(rss_before / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_rss_growth_mib": round((peak - rss_before) / 2**20, 1),
        "index_step_traced_peak_mib": round(traced_peak / 2**20, 1),
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks = [r["chunks"] for r in results]
    fig, (runs, queries, memory) = plt.subplots(1, 3, figsize=(13, 4))
    runs.loglog(chunks, [r["full_rebuild_s"] for r in results], "o-", label="full rebuild (vectors cached)")
    runs.loglog(chunks, [r["cold_full_rebuild_encoder_s_at_that_rate"] for r in results], "s:",
                label="+ encoder, cold cache (chunks / rate)")  # fmt: skip
    runs.loglog(chunks, [r["changed_1pct_s"] for r in results], "^-", label="1 % of documents rewritten")
    runs.set(xlabel="chunks in the corpus", ylabel="seconds", title="Index runs")
    runs.legend(fontsize=8)
    queries.loglog(chunks, [r["hybrid_latency_p50_ms"] for r in results], "o-", label="p50")
    queries.loglog(chunks, [r["hybrid_latency_p95_ms"] for r in results], "^-", label="p95")
    queries.set(xlabel="chunks in the corpus", ylabel="ms", title="Hybrid query latency (k=10)")
    queries.legend(fontsize=8)
    memory.loglog(chunks, [max(r["peak_rss_growth_mib"], 0.1) for r in results], "o-",
                  label="peak RSS growth during the runs")  # fmt: skip
    if all("index_step_traced_peak_mib" in r for r in results):
        memory.loglog(chunks, [r["index_step_traced_peak_mib"] for r in results], "s-",
                      label="index step's allocations (tracemalloc peak)")  # fmt: skip
    memory.set(xlabel="chunks in the corpus", ylabel="MiB", title="Memory of the indexing process")
    memory.legend(fontsize=8)
    for ax in (runs, queries, memory):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Cost as the corpus grows (1x, 5x, 25x the shared reports; {os.cpu_count()} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slope(results: list[dict[str, Any]], key: str) -> float:
    """Log-log slope between the smallest and largest scale: 1.0 is linear growth."""
    a, b = results[0], results[-1]
    return round(float(np.log(b[key] / a[key]) / np.log(b["chunks"] / a["chunks"])), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 5, 25])
    parser.add_argument("--seed-cache", type=Path, default=None, help="a vector cache with the shared corpus's vectors")
    parser.add_argument("--out", default="index_scale", help="stem of the JSON and PNG under bench/results/")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.seed_cache)), flush=True)
        return
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # 1, 5 and 15 minutes
    results = []
    for scale in args.scales:
        cmd = [sys.executable, __file__, "--child", str(scale)]
        if args.seed_cache:
            cmd += ["--seed-cache", str(args.seed_cache)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"scale {scale} failed:\n{done.stderr[-4000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
        command = "python bench/index_scale.py --scales " + " ".join(map(str, args.scales))
        save(results, command, load_at_start, args.out)  # kept per scale


def save(results: list[dict[str, Any]], command: str, load_at_start: list[float], stem: str) -> None:
    """Write the JSON and the plot of the scales measured so far."""
    OUT.mkdir(parents=True, exist_ok=True)
    plot(results, OUT / f"{stem}.png")
    keys = ("full_rebuild_s", "changed_1pct_s", "hybrid_latency_p50_ms", "hybrid_latency_p95_ms", "peak_rss_mib")
    keys += ("index_step_traced_peak_mib",) if all("index_step_traced_peak_mib" in r for r in results) else ()
    out = {
        "command": command,
        "machine_note": MACHINE_NOTE,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "corpus_note": "k editions of the 42 shared reports differing only in id: distinct objects, shared vectors",
        "loglog_slopes_smallest_to_largest": {k: slope(results, k) for k in keys} if len(results) > 1 else {},
        "results": results,
    }
    (OUT / f"{stem}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["loglog_slopes_smallest_to_largest"]))
    print(f"saved {OUT / stem}.json and .png")


if __name__ == "__main__":
    main()
