"""The retrieval defaults on a public test collection this project was never tuned on (issue 12).

    python bench/public_retrieval.py [--limit-docs N]

Needs Weaviate and MLflow (started with `pipelines up --no-airflow` if not running). Indexes the NPL (Vaswani)
collection (`bench/data/vaswani_npl/`: 11,429 abstracts, 93 queries, 2,083 judgements) through the pipeline's own
index step into a fresh collection, then scores with pytrec_eval, per query:
- the shipped default (hybrid, relative-score fusion, alpha = HYBRID_ALPHA, keyword side title^2);
- vector only and BM25 only, the single modes hybrid must not fall below;
- untuned rank fusion at alpha 0.5, and every alpha of both fusions (read, not chosen: choosing here would be
  tuning on the very set that is meant to be untouched).
Reports nDCG@10 (the BEIR measure), Recall@10 and MRR, and a paired bootstrap interval (over queries) of each
hybrid's nDCG@10 gain over the better single mode. Writes bench/results/public_retrieval.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import re
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchkit import load_note
from tune_retrieval import ALPHAS, FUSIONS, Config, index_fresh, run_config

from pipelines.behaviour.intervals import mean_gain
from pipelines.devstack import stack
from pipelines.knowledge import index as idx
from pipelines.knowledge.documents import Document
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.evaluation import GoldenSet
from pipelines.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "vaswani_npl"
OUT = ROOT / "bench" / "results" / "public_retrieval.json"
METRICS = {"ndcg_cut_10": "ndcg_at_10", "recall_10": "recall_at_10", "recip_rank": "mrr"}
OBJECTIVE = "ndcg_at_10"
_DOC = re.compile(r"<DOC>\s*<DOCNO>\s*(\S+)\s*</DOCNO>(.*?)</DOC>", re.S)
_TOPIC = re.compile(r"<num>\s*(\S+)\s*</num>\s*<title>(.*?)</title>", re.S)


def load_collection(limit_docs: int = 0) -> tuple[list[Document], GoldenSet]:
    """NPL's documents (no titles: the abstracts are all there is) and its queries and judgements."""
    text = gzip.decompress((DATA / "doc-text.trec.gz").read_bytes()).decode()
    documents = [
        Document(id=f"npl-{number}", title="", text=" ".join(body.split()), file_type="txt")
        for number, body in _DOC.findall(text)
    ]
    queries = {num: " ".join(title.split()) for num, title in _TOPIC.findall((DATA / "query-text.trec").read_text())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (DATA / "qrels").read_text().split("\n"):
        if line.strip():
            query, _, doc, rel = line.split()
            qrels.setdefault(query, {})[f"npl-{doc}"] = int(rel)
    if limit_docs:  # a quick look at the plumbing: the first N documents, and only queries judged on them
        documents = documents[:limit_docs]
        kept = {d.id for d in documents}
        qrels = {q: {d: r for d, r in judged.items() if d in kept} for q, judged in qrels.items()}
        qrels = {q: judged for q, judged in qrels.items() if judged}
    return documents, GoldenSet({q: t for q, t in queries.items() if q in qrels}, qrels)


def build_index(base: Settings, embedder: Embedder, documents: list[Document]) -> tuple[Settings, dict[str, Any]]:
    """The pipeline's full rebuild into a fresh collection; returns its settings and the index step's timings."""
    settings, result = index_fresh(
        base,
        embedder,
        documents,
        "Npl",
        # every vector is computed here, from this collection's text
        {"reindex_experiment": "bench-public-retrieval", "vector_cache_file": None},
    )
    return settings, {"chunks": result.counts.get("chunks_to_write", 0), "timings_s": result.timings_s}


def per_query(golden: GoldenSet, runs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per-query scores; a query with no hit scores 0 (a miss, not an absence)."""
    import pytrec_eval

    scored = pytrec_eval.RelevanceEvaluator(golden.qrels, set(METRICS)).evaluate({q: dict(r) for q, r in runs.items()})
    zero = dict.fromkeys(METRICS.values(), 0.0)
    return {
        q: {ours: float(scored[q][theirs]) for theirs, ours in METRICS.items()} if q in scored else zero
        for q in golden.queries
    }


def means(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {m: statistics.fmean(s[m] for s in scores.values()) for m in METRICS.values()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-docs", type=int, default=0, help="index only the first N documents (plumbing check)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    settings = get_settings()
    stack.up(settings, with_airflow=False)
    documents, golden = load_collection(args.limit_docs)
    print(f"NPL: {len(documents)} documents, {len(golden.queries)} queries")
    embedder = Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    started = time.perf_counter()
    bench_settings, index_info = build_index(settings, embedder, documents)
    index_s = time.perf_counter() - started
    vectors = {q: embedder.embed_query(t).tolist() for q, t in golden.queries.items()}
    default = Config("hybrid", settings.hybrid_alpha, "relative_score", 2)  # what Retriever.search runs
    configs = [Config("vector"), Config("bm25", boost=2), default]
    configs += [Config("hybrid", a, f, 2) for f in FUSIONS for a in ALPHAS if Config("hybrid", a, f, 2) != default]
    scores: dict[str, dict[str, dict[str, float]]] = {}
    with idx.connect(bench_settings) as client:
        collection = idx.alias_target(client, bench_settings.collection_alias) or bench_settings.collection_alias
        for config in configs:
            scores[config.label] = per_query(golden, run_config(client, collection, config, golden, vectors))
        for name in idx.versions(client, bench_settings.collection_alias):
            client.collections.delete(name)
        client.alias.delete(alias_name=bench_settings.collection_alias)

    vector, bm25 = Config("vector").label, Config("bm25", boost=2).label
    best_single = max((vector, bm25), key=lambda label: means(scores[label])[OBJECTIVE])
    queries = sorted(golden.queries)

    def gain(label: str) -> dict[str, float]:
        interval = mean_gain(
            [scores[label][q][OBJECTIVE] for q in queries], [scores[best_single][q][OBJECTIVE] for q in queries]
        )
        return {"estimate": interval.estimate, "low": interval.low, "high": interval.high, "queries": interval.items}

    ranked = Config("hybrid", 0.5, "ranked", 2).label
    summary = {
        "shipped_default": default.label,
        "best_single_mode": best_single,
        "rows": {label: means(scores[label]) for label in scores},
        "ndcg10_gain_over_best_single": {label: gain(label) for label in (default.label, ranked)},
    }
    print(f"{'setting':<44} nDCG@10  R@10    MRR")
    for label, row in summary["rows"].items():
        print(f"{label:<44} {row['ndcg_at_10']:.3f}   {row['recall_at_10']:.3f}   {row['mrr']:.3f}")
    for label, g in summary["ndcg10_gain_over_best_single"].items():
        print(f"{label} - {best_single}: {g['estimate']:+.3f} [95 % CI {g['low']:+.3f}, {g['high']:+.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python bench/public_retrieval.py"
                + (f" --limit-docs {args.limit_docs}" if args.limit_docs else ""),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                "machine_note": load_note(),
                "collection": {"name": "NPL (Vaswani)", "documents": len(documents), "queries": len(queries)},
                "index": {**index_info, "wall_s": index_s},
                "summary": summary,
                "per_query": scores,
            },
            indent=2,
        )
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
