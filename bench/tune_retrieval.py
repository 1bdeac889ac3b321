"""Tune hybrid retrieval on the tuning half of the golden queries; report it on the reporting half.

    python bench/tune_retrieval.py [--salts 5]

Needs Weaviate and MLflow (started with `pipelines up --no-airflow` if not running). Indexes the
shared corpus into a fresh collection, then sweeps alpha x fusion (relativeScore, rankedFusion) x
title boost. The setting with the best tuning-half nDCG@5 is reported on the reporting half beside
vector-only and BM25-only (whose title boost is also picked on the tuning half). The split is
`pipelines.evalsplit.split_of` (fixed salt). A split-robustness check repeats the whole choice with
other salts: tuned on one half, reported on the other. Writes bench/results/tune_retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import load_note, scratch_dir

from pipelines.devstack import stack
from pipelines.evalsplit import SPLIT_SALT, split_of
from pipelines.knowledge import index as idx
from pipelines.knowledge.documents import Document, load_documents
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.evaluation import GoldenSet, load_golden, rank_documents
from pipelines.knowledge.reindex import IndexResult, commit_index, index_step, stage_documents
from pipelines.settings import Settings, get_settings
from pipelines.tracking import tracked_run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "tune_retrieval.json"
# Harder than Recall@10, which is 1.0 for nearly every mode on 42 documents.
METRICS = {"ndcg_cut_5": "ndcg_at_5", "recall_3": "recall_at_3", "recall_10": "recall_at_10", "recip_rank": "mrr"}
OBJECTIVE = "ndcg_at_5"
ALPHAS = [round(a / 10, 1) for a in range(1, 10)]  # 0 and 1 are the single modes, measured on their own
FUSIONS = ("relative_score", "ranked")
BOOSTS = (1, 2, 3)
DEPTH = 50  # chunks per query, as in the knowledge evaluation


@dataclass(frozen=True)
class Config:
    """One retrieval setting: mode, and for hybrid its alpha and fusion; the title boost for keyword search."""

    mode: str
    alpha: float = 0.0
    fusion: str = ""
    boost: int = 1

    @property
    def label(self) -> str:
        if self.mode == "vector":
            return "vector"
        if self.mode == "bm25":
            return f"bm25 title^{self.boost}"
        return f"hybrid {self.fusion} alpha={self.alpha} title^{self.boost}"


def build_index(base: Settings, embedder: Embedder) -> Settings:
    """Index the shared corpus into a fresh collection and let Weaviate flush it (BM25 statistics)."""
    documents, _ = load_documents(str(ROOT / "data" / "documents"))
    settings, _ = index_fresh(base, embedder, documents, "Tune", {"reindex_experiment": "bench-tune-retrieval"})
    return settings


def index_fresh(
    base: Settings, embedder: Embedder, documents: Sequence[Document], alias_prefix: str, updates: Mapping[str, Any]
) -> tuple[Settings, IndexResult]:
    """The pipeline's full rebuild of `documents` into a fresh collection, committed and flushed (BM25 statistics).

    Returns the settings that name the collection (`updates` applied) and the index step's result.
    """
    settings = base.model_copy(
        update={
            "state_dir": scratch_dir(f"{alias_prefix.lower()}-index-"),
            "collection_alias": f"{alias_prefix}{uuid.uuid4().hex[:6]}",
            **updates,
        }
    )
    with tracked_run(settings, settings.reindex_experiment) as run:
        run_id = run.info.run_id
    run_dir = settings.state_dir / "runs" / run_id
    stage_documents(run_dir / "documents.jsonl", documents)
    (run_dir / "quarantined.json").write_text("{}")
    result = index_step(settings, run_id, full_rebuild=True, embedder=embedder, allow_mass_change=True)
    commit_index(settings, run_id, result)
    time.sleep(settings.settle_wait_s)
    return settings, result


def run_config(client: Any, collection: str, config: Config, golden: GoldenSet, vectors: Mapping[str, list[float]]):  # type: ignore[no-untyped-def]
    """Document rankings of every golden query under `config`."""
    from weaviate.classes.query import HybridFusion

    target = client.collections.use(collection)
    where = idx.visible_filter(idx.live_generation(client, collection))
    props = [f"title^{config.boost}" if config.boost != 1 else "title", "text"]
    fusion = HybridFusion.RELATIVE_SCORE if config.fusion == "relative_score" else HybridFusion.RANKED
    runs = {}
    for qid, text in golden.queries.items():
        if config.mode == "bm25":
            result = target.query.bm25(
                text, query_properties=props, limit=DEPTH, filters=where, return_properties=["doc_id"]
            )
        elif config.mode == "vector":
            result = target.query.near_vector(vectors[qid], limit=DEPTH, filters=where, return_properties=["doc_id"])
        else:
            result = target.query.hybrid(
                text,
                vector=vectors[qid],
                alpha=config.alpha,
                fusion_type=fusion,
                query_properties=props,
                limit=DEPTH,
                filters=where,
                return_properties=["doc_id"],
            )
        runs[qid] = rank_documents([str(o.properties["doc_id"]) for o in result.objects])
    return runs


def per_query_scores(golden: GoldenSet, runs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(golden.qrels, set(METRICS))
    scored = evaluator.evaluate({q: dict(r) for q, r in runs.items()})
    zero = {ours: 0.0 for ours in METRICS.values()}
    return {
        q: ({ours: float(scored[q][theirs]) for theirs, ours in METRICS.items()} if q in scored else zero)
        for q in golden.queries
    }


def mean(per_query: Mapping[str, Mapping[str, float]], ids: Sequence[str]) -> dict[str, float]:
    return {m: statistics.fmean(per_query[q][m] for q in ids) for m in METRICS.values()}


def choose(
    configs: Sequence[Config], scores: Mapping[Config, dict[str, dict[str, float]]], ids: Sequence[str]
) -> Config:
    """Best mean nDCG@5 on `ids`; ties go to the higher MRR, then to the alpha nearest 0.5, then boost 2."""

    def key(c: Config) -> tuple[float, float, float, float]:
        m = mean(scores[c], ids)
        return (round(m[OBJECTIVE], 6), round(m["mrr"], 6), -abs(c.alpha - 0.5), -abs(c.boost - 2))

    return max(configs, key=key)


def halves(ids: Sequence[str], salt: str) -> tuple[list[str], list[str]]:
    tuning = [q for q in ids if split_of(q, salt) == "tuning"]
    return tuning, [q for q in ids if q not in tuning]


def report_split(scores: Mapping[Config, dict[str, dict[str, float]]], ids: Sequence[str], salt: str) -> dict[str, Any]:
    """Choose hybrid and BM25 settings on the tuning half of `salt`, report all modes on both halves."""
    tuning, reporting = halves(ids, salt)
    hybrids = [c for c in scores if c.mode == "hybrid"]
    chosen = choose(hybrids, scores, tuning)
    bm25 = choose([c for c in scores if c.mode == "bm25"], scores, tuning)
    vector = next(c for c in scores if c.mode == "vector")
    # Untuned rank fusion: no weight learnt at all, so it cannot have fitted either half.
    rrf = next(c for c in hybrids if c.fusion == "ranked" and c.alpha == 0.5 and c.boost == 2)
    rows = {"hybrid_tuned": chosen, "hybrid_ranked_untuned": rrf, "vector": vector, "bm25": bm25}
    table: dict[str, dict[str, Any]] = {
        name: {"setting": c.label, "tuning": mean(scores[c], tuning), "reporting": mean(scores[c], reporting)}
        for name, c in rows.items()
    }
    best_single = max(table["vector"]["reporting"][OBJECTIVE], table["bm25"]["reporting"][OBJECTIVE])
    return {
        "salt": salt,
        "tuning_queries": len(tuning),
        "reporting_queries": len(reporting),
        "rows": table,
        "hybrid_tuned_ge_best_single_on_reporting": table["hybrid_tuned"]["reporting"][OBJECTIVE] >= best_single,
        "hybrid_ranked_ge_best_single_on_reporting": table["hybrid_ranked_untuned"]["reporting"][OBJECTIVE]
        >= best_single,
    }


def sweep(settings: Settings) -> tuple[dict[Config, dict[str, dict[str, float]]], float]:
    """Per-query scores of every setting on a fresh index of the shared corpus."""
    stack.up(settings, with_airflow=False)
    embedder = Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    golden = load_golden(ROOT / "data" / "golden")
    bench_settings = build_index(settings, embedder)
    vectors = {q: embedder.embed_query(t).tolist() for q, t in golden.queries.items()}
    scores: dict[Config, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()
    with idx.connect(bench_settings) as client:
        collection = idx.alias_target(client, bench_settings.collection_alias) or bench_settings.collection_alias
        for config in all_configs():
            scores[config] = per_query_scores(golden, run_config(client, collection, config, golden, vectors))
        client.collections.delete(collection)
    return scores, time.perf_counter() - started


def all_configs() -> list[Config]:
    configs = [Config("vector")] + [Config("bm25", boost=b) for b in BOOSTS]
    return configs + [Config("hybrid", a, f, b) for f in FUSIONS for a in ALPHAS for b in BOOSTS]


def fixed_over_splits(
    scores: Mapping[Config, dict[str, dict[str, float]]], ids: Sequence[str], salts: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each fixed hybrid setting against the better single mode on every split's reporting half.

    Read-only evidence: a setting picked from this table would be picked on all queries, not on a tuning half.
    """
    out = {}
    for config in (c for c in scores if c.mode == "hybrid"):
        margins = []
        for salt in salts:
            tuning, reporting = halves(ids, salt)
            bm25 = choose([c for c in scores if c.mode == "bm25"], scores, tuning)
            vector = next(c for c in scores if c.mode == "vector")
            best = max(mean(scores[vector], reporting)[OBJECTIVE], mean(scores[bm25], reporting)[OBJECTIVE])
            margins.append(mean(scores[config], reporting)[OBJECTIVE] - best)
        out[config.label] = {
            "ge_best_single": sum(m >= 0 for m in margins),
            "splits": len(salts),
            "mean_margin": statistics.fmean(margins),
            "worst_margin": min(margins),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--salts", type=int, default=20, help="other hash salts for the split-robustness check")
    parser.add_argument("--rescore", type=Path, help="reuse the per-query scores of an earlier JSON (no Weaviate)")
    args = parser.parse_args()
    ids = list(load_golden(ROOT / "data" / "golden").queries)
    configs = all_configs()
    if args.rescore:
        earlier = json.loads(args.rescore.read_text())
        scores = {c: earlier["per_query"][c.label] for c in configs}
        sweep_s = float(earlier["sweep"]["seconds"])
    else:
        scores, sweep_s = sweep(get_settings())

    main_split = report_split(scores, ids, SPLIT_SALT)
    salts = [f"robustness-{k}" for k in range(1, args.salts + 1)]
    robustness = [report_split(scores, ids, salt) for salt in salts]
    out: dict[str, Any] = {
        "command": f"python bench/tune_retrieval.py --salts {args.salts}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "machine_note": f"retrieval quality does not depend on load; {load_note()}",
        "corpus": "data/documents (42 business reports), golden: data/golden (50 queries)",
        "objective": OBJECTIVE,
        "selection_rule": "best tuning-half nDCG@5; ties: higher MRR, alpha nearest 0.5, title boost nearest 2",
        "rescored_from": str(args.rescore) if args.rescore else None,
        "split_salt": SPLIT_SALT,
        "sweep": {"alphas": ALPHAS, "fusions": FUSIONS, "title_boosts": BOOSTS, "seconds": sweep_s},
        "main_split": main_split,
        "robustness": robustness,
        "robustness_summary": {
            "hybrid_tuned_ge_best_single": sum(r["hybrid_tuned_ge_best_single_on_reporting"] for r in robustness),
            "hybrid_ranked_untuned_ge_best_single": sum(
                r["hybrid_ranked_ge_best_single_on_reporting"] for r in robustness
            ),
            "splits": len(robustness),
        },
        "fixed_settings_over_splits": fixed_over_splits(scores, ids, [SPLIT_SALT, *salts]),
        "all_settings_all_queries": {c.label: mean(scores[c], ids) for c in configs},
        # Raw per-query scores of every setting: any other split or selection rule can be recomputed from these.
        "per_query": {
            c.label: {q: {m: round(v, 4) for m, v in s.items()} for q, s in scores[c].items()} for c in configs
        },
        "not_measured": "public BEIR sets could not be fetched offline; only the shared business-reports set is here",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    print_summary(out)
    print(f"saved {OUT}")


def print_summary(out: dict) -> None:
    main_split = out["main_split"]
    print(
        f"split {main_split['salt']}: {main_split['tuning_queries']} tuning / {main_split['reporting_queries']} "
        f"reporting queries"
    )
    heads = [f"{h} {m}" for h in ("tun", "rep") for m in METRICS.values()]
    print(f"{'row':24s} {'setting':44s} " + " ".join(f"{h:>18s}" for h in heads))
    for name, row in main_split["rows"].items():
        cells = [row[h][m] for h in ("tuning", "reporting") for m in METRICS.values()]
        print(f"{name:24s} {row['setting']:44s} " + " ".join(f"{v:18.3f}" for v in cells))
    s = out["robustness_summary"]
    n = s["splits"]
    print(
        f"robustness: tuned hybrid >= best single mode (reporting nDCG@5) on {s['hybrid_tuned_ge_best_single']}/{n}"
        f" splits; untuned rank fusion on {s['hybrid_ranked_untuned_ge_best_single']}/{n}"
    )


if __name__ == "__main__":
    main()
