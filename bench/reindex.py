"""Re-indexing benchmark: encoder vs full re-index, incremental runs, edits, latency.

    python bench/reindex.py [--scale 3]

Needs Weaviate and MLflow (it starts them with `pipelines up --no-airflow` if they
are not running). Each case uses a fresh collection and a fresh vector cache, so
nothing is reused that the case does not reuse in production. Prints one table
per corpus (the shared corpus and a scaled-up copy) and writes
bench/results/reindex.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from benchkit import scratch_dir

from pipelines.devstack import stack
from pipelines.knowledge import index as idx
from pipelines.knowledge.chunking import chunk_document
from pipelines.knowledge.documents import Document, load_documents
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import chunker_config, commit_index, index_step, stage_documents
from pipelines.knowledge.retrieval import Retriever
from pipelines.settings import Settings, get_settings
from pipelines.tracking import tracked_run

ROOT = Path(__file__).resolve().parent.parent


def scaled(documents: list[Document], factor: int) -> list[Document]:
    """`factor` copies of the corpus; copies differ in title, so none shares a vector."""
    out = list(documents)
    for k in range(1, factor):
        out += [replace(d, id=f"{d.id}-copy{k}", title=f"{d.title} (edition {k + 1})") for d in documents]
    return out


def run_index(settings: Settings, documents: list[Document], embedder: Embedder, full: bool) -> tuple[float, dict]:
    """Stage `documents` under a fresh MLflow run and time the index step."""
    with tracked_run(settings, settings.reindex_experiment) as run:
        run_id = run.info.run_id
    run_dir = settings.state_dir / "runs" / run_id
    stage_documents(run_dir / "documents.jsonl", documents)
    (run_dir / "quarantined.json").write_text("{}")
    started = time.perf_counter()
    # Index and commit (readers switch to the new generation); the retrieval gate is not timed here.
    result = index_step(settings, run_id, full_rebuild=full, embedder=embedder, allow_mass_change=True)
    commit_index(settings, run_id, result)
    elapsed = time.perf_counter() - started
    print(f"  index step ({'full' if full else 'incremental'}): {elapsed:.2f}s {result.timings_s}")
    return elapsed, {"embedded": result.chunks_embedded, **result.counts}


def edit_paragraph(document: Document, rng: random.Random) -> Document:
    paragraphs = document.text.split("\n\n")
    i = rng.randrange(len(paragraphs))
    paragraphs[i] += " (Updated figures were published this quarter.)"
    return replace(document, text="\n\n".join(paragraphs))


def document_level_replacement(settings: Settings, embedder: Embedder, edited: list[Document]) -> tuple[float, int]:
    """What replace-the-whole-document tools do: delete its chunks, re-embed and write them all."""
    chunker = chunker_config(settings)
    with idx.connect(settings) as client:
        collection = idx.alias_target(client, settings.collection_alias) or settings.collection_alias
        chunks = [c for d in edited for c in chunk_document(d, chunker)]
        started = time.perf_counter()
        from weaviate.classes.query import Filter

        client.collections.use(collection).data.delete_many(
            where=Filter.by_property("doc_id").contains_any([d.id for d in edited])
        )
        vectors = embedder.embed([c.embedding_text for c in chunks])
        idx.upsert_chunks(client, collection, chunks, vectors)
        return time.perf_counter() - started, len(chunks)


def bench_corpus(base: Settings, documents: list[Document], embedder: Embedder, label: str) -> dict:
    tmp = scratch_dir(f"bench-{label}-")
    settings = base.model_copy(
        update={
            "state_dir": tmp,
            "collection_alias": f"Bench{uuid.uuid4().hex[:6]}",
            "vector_cache_file": None,
            "reindex_experiment": "bench-reindex",
        }
    )
    chunker = chunker_config(settings)
    chunks = [c for d in documents for c in chunk_document(d, chunker)]
    texts = [c.embedding_text for c in chunks]
    embedder.embed(texts[:64])  # warm-up
    started = time.perf_counter()
    embedder.embed(texts)
    raw_s = time.perf_counter() - started
    raw_rate = len(texts) / raw_s

    full_s, full_counts = run_index(settings, documents, embedder, full=True)
    with idx.connect(settings) as client:
        idx.point_alias(client, settings.collection_alias, idx.versions(client, settings.collection_alias)[-1])
    full_rate = full_counts["chunks_to_write"] / full_s

    rng = random.Random(7)
    n_changed = max(1, round(len(documents) * 0.01))
    picked = rng.sample(range(len(documents)), n_changed)
    changed = list(documents)
    for i in picked:  # a whole-document rewrite: every chunk is new
        changed[i] = replace(changed[i], text=changed[i].text.replace(". ", ". Indeed, "))
    incr_s, incr_counts = run_index(settings, changed, embedder, full=False)

    noop_s, noop_counts = run_index(settings, changed, embedder, full=False)

    edited = list(changed)
    for i in picked:
        edited[i] = edit_paragraph(edited[i], rng)
    edit_s, edit_counts = run_index(settings, edited, embedder, full=False)
    edited_docs = [edited[i] for i in picked]
    doc_level_s, doc_level_chunks = document_level_replacement(settings, embedder, edited_docs)

    with idx.connect(settings) as client:
        retriever = Retriever(client, embedder, settings.collection_alias, settings.hybrid_alpha)
        queries = [json.loads(line)["text"] for line in (ROOT / "data/golden/queries.jsonl").read_text().splitlines()]
        latencies = []
        for query in queries * 2:
            started = time.perf_counter()
            retriever.search(query, k=10)
            latencies.append((time.perf_counter() - started) * 1000)
        for name in idx.versions(client, settings.collection_alias):
            client.collections.delete(name)
        client.alias.delete(alias_name=settings.collection_alias)

    return {
        "corpus": label,
        "documents": len(documents),
        "chunks": len(chunks),
        "raw_encoder_chunks_per_s": raw_rate,
        "full_reindex_chunks_per_s": full_rate,
        "full_vs_raw_ratio": full_rate / raw_rate,
        "full_reindex_s": full_s,
        "incremental_1pct_changed_docs": n_changed,
        "incremental_1pct_s": incr_s,
        "incremental_1pct_vs_full_ratio": incr_s / full_s,
        "incremental_1pct_embedded": incr_counts["embedded"],
        "unchanged_rerun_s": noop_s,
        "unchanged_rerun_embedded": noop_counts["embedded"],
        "paragraph_edit_embedded": edit_counts["embedded"],
        "paragraph_edit_edited_paragraphs": n_changed,
        "paragraph_edit_s": edit_s,
        "paragraph_edit_vs_full_ratio": edit_s / full_s,
        "document_level_embedded": doc_level_chunks,
        "document_level_s": doc_level_s,
        "paragraph_edit_embedded_vs_document_level": edit_counts["embedded"] / doc_level_chunks,
        "paragraph_edit_time_vs_document_level": edit_s / doc_level_s,
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=3, help="copies of the corpus in the scaled-up case")
    args = parser.parse_args()
    settings = get_settings()
    stack.up(settings, with_airflow=False)
    documents, _ = load_documents(str(ROOT / "data" / "documents"))
    embedder = Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    results = [
        bench_corpus(settings, documents, embedder, "shared"),
        bench_corpus(settings, scaled(documents, args.scale), embedder, f"shared-x{args.scale}"),
    ]
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores"
    print(f"\nmachine: {machine}")
    keys = [k for k in results[0] if k != "corpus"]
    print(f"{'metric':44s}" + "".join(f"{r['corpus']:>16s}" for r in results))
    for key in keys:
        print(
            f"{key:44s}" + "".join(f"{r[key]:16.3f}" if isinstance(r[key], float) else f"{r[key]:16d}" for r in results)
        )
    out = ROOT / "bench" / "results" / "reindex.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
