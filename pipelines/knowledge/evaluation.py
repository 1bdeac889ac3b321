"""Retrieval quality on a golden query set, and the gate that guards the index.

Metrics come from pytrec_eval (the TREC reference implementation). Judgements
are at document level: a document ranks by its best chunk.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.evalsplit import split_of
from pipelines.knowledge.retrieval import MODES, Retriever

METRICS = {
    "ndcg_cut_10": "ndcg_at_10",
    "recall_10": "recall_at_10",
    "recip_rank": "mrr",
    # Harder judgements: Recall@10 is 1.0 for nearly every mode on the shared 42 documents (issue 12).
    "ndcg_cut_5": "ndcg_at_5",
    "recall_3": "recall_at_3",
}
CHUNKS_PER_QUERY = 50


@dataclass(frozen=True)
class GoldenSet:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    # Every query is always measured: a query whose documents are no longer indexed is a miss, not
    # an absence. (Dropping such queries let a drop that deleted 41 of 42 reports pass at nDCG 1.0.)


@dataclass
class RetrievalReport:
    """Mean metrics per mode (hybrid, vector, bm25), per-query detail and latency."""

    metrics: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def flat(self) -> dict[str, float]:
        """`hybrid_ndcg_at_10`-style names over all queries, plus `tuning.`/`reporting.` means per half, for MLflow."""
        flat = {f"{mode}_{name}": value for mode, values in self.metrics.items() for name, value in values.items()}
        for half, modes in self.halves().items():
            flat.update({f"{half}.{mode}_{name}": v for mode, values in modes.items() for name, v in values.items()})
        return flat

    def halves(self) -> dict[str, dict[str, dict[str, float]]]:
        """Mean metrics per mode on each half of `pipelines.evalsplit` (knobs are tuned on `tuning` only)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for mode, per_query in self.per_query.items():
            for half in ("tuning", "reporting"):
                scores = [s for q, s in per_query.items() if split_of(q) == half]
                if scores:
                    names = scores[0].keys()
                    out.setdefault(half, {})[mode] = {n: sum(s[n] for s in scores) / len(scores) for n in names}
        return out


@dataclass(frozen=True)
class RetrievalGateDecision:
    """Whether a run may go live, and why."""

    passed: bool
    reasons: list[str]
    baseline_run_id: str | None = None


def load_golden(directory: Path) -> GoldenSet:
    """`queries.jsonl` (BEIR) and `qrels.tsv` (query-id, doc-id, score)."""
    queries = {}
    for line in (directory / "queries.jsonl").read_text().split("\n"):
        if line.strip():
            row = json.loads(line)
            queries[str(row["_id"])] = str(row["text"])
    qrels: dict[str, dict[str, int]] = {}
    with (directory / "qrels.tsv").open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            doc = row.get("doc-id") or row.get("corpus-id") or ""
            qrels.setdefault(row["query-id"], {})[doc] = int(row["score"])
    return GoldenSet({q: t for q, t in queries.items() if q in qrels}, qrels)


def rank_documents(doc_ids: Sequence[str], depth: int = 10) -> dict[str, float]:
    """Documents in order of their best chunk, as descending scores for pytrec_eval."""
    ranked: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in ranked:
            ranked.append(doc_id)
    return {doc_id: float(len(ranked) - i) for i, doc_id in enumerate(ranked[:depth])}


def score_runs(golden: GoldenSet, runs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per-query metrics from pytrec_eval, renamed to ours."""
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(golden.qrels, set(METRICS))
    scored = evaluator.evaluate({q: dict(r) for q, r in runs.items()})
    return {q: {ours: float(values[theirs]) for theirs, ours in METRICS.items()} for q, values in scored.items()}


def evaluate_retrieval(retriever: Retriever, golden: GoldenSet, modes: Sequence[str] = MODES) -> RetrievalReport:
    """Run every golden query in every mode and average the metrics."""
    report = RetrievalReport(metrics={})
    for mode in modes:
        runs = {}
        for query_id, text in golden.queries.items():
            started = time.perf_counter()
            hits = retriever.search(text, k=CHUNKS_PER_QUERY, mode=mode)
            if mode == "hybrid":
                report.latencies_ms.append((time.perf_counter() - started) * 1000)
            runs[query_id] = rank_documents([hit.doc_id for hit in hits])
        per_query = score_runs(golden, runs)
        for query_id in golden.queries:  # a query with no hits scores zero, not "missing"
            per_query.setdefault(query_id, {name: 0.0 for name in METRICS.values()})
        report.per_query[mode] = per_query
        report.metrics[mode] = {
            name: sum(q[name] for q in per_query.values()) / max(len(per_query), 1) for name in METRICS.values()
        }
    return report


@dataclass(frozen=True)
class Baseline:
    """A run the gate compares with: the last accepted one, or the reference a person pinned."""

    label: str
    metrics: Mapping[str, float]
    run_id: str


def gate(current: Mapping[str, float], baselines: Sequence[Baseline], tolerance: float) -> RetrievalGateDecision:
    """Pass unless hybrid nDCG@10 or Recall@10 fell more than `tolerance` below any baseline.

    Comparing with a pinned reference as well as with the last accepted run stops quality from
    sliding down by the tolerance on every run.
    """
    if not baselines:
        return RetrievalGateDecision(True, ["no accepted run yet: this run sets the baseline"], None)
    reasons, passed = [], True
    for baseline in baselines:
        for name in ("hybrid_ndcg_at_10", "hybrid_recall_at_10"):
            now, before = current.get(name, 0.0), baseline.metrics.get(name)
            if before is None:
                continue
            if now < before - tolerance:
                passed = False
                reasons.append(
                    f"{name} fell from {before:.4f} ({baseline.label} {baseline.run_id}) to {now:.4f} "
                    f"(tolerance {tolerance})"
                )
            else:
                reasons.append(f"{name} {now:.4f} vs {baseline.label} {before:.4f}: ok")
    return RetrievalGateDecision(passed, reasons, baselines[0].run_id)
