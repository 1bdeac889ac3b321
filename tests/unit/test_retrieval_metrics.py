"""Document-level ranking, pytrec_eval metrics and the quality gate."""

from __future__ import annotations

import pytest

from pipelines.knowledge.evaluation import Baseline, GoldenSet, gate, rank_documents, score_runs


def test_documents_rank_by_their_best_chunk() -> None:
    ranked = rank_documents(["b", "a", "b", "c", "a"])
    assert sorted(ranked, key=ranked.get, reverse=True) == ["b", "a", "c"]


def test_metrics_match_hand_computed_values() -> None:
    golden = GoldenSet({"q1": "x", "q2": "y"}, {"q1": {"a": 1}, "q2": {"z": 1}})
    scores = score_runs(golden, {"q1": rank_documents(["a", "b"]), "q2": rank_documents(["b", "z"])})
    assert scores["q1"] == {"ndcg_at_10": 1.0, "recall_at_10": 1.0, "mrr": 1.0, "ndcg_at_5": 1.0, "recall_at_3": 1.0}
    assert scores["q2"]["mrr"] == 0.5
    assert scores["q2"]["ndcg_at_10"] == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert scores["q2"]["ndcg_at_5"] == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert scores["q2"]["recall_at_3"] == 1.0


def test_recall_at_3_misses_a_document_ranked_fourth() -> None:
    golden = GoldenSet({"q1": "x"}, {"q1": {"d": 1}})
    scores = score_runs(golden, {"q1": rank_documents(["a", "b", "c", "d"])})
    assert scores["q1"]["recall_at_3"] == 0.0 and scores["q1"]["recall_at_10"] == 1.0


def test_gate_passes_first_run_and_blocks_regression() -> None:
    assert gate({"hybrid_ndcg_at_10": 0.5}, [], 0.02).passed
    baseline = [Baseline("last accepted run", {"hybrid_ndcg_at_10": 0.90, "hybrid_recall_at_10": 1.0}, "r1")]
    assert gate({"hybrid_ndcg_at_10": 0.89, "hybrid_recall_at_10": 1.0}, baseline, 0.02).passed
    decision = gate({"hybrid_ndcg_at_10": 0.80, "hybrid_recall_at_10": 1.0}, baseline, 0.02)
    assert not decision.passed and "fell from 0.9000 (last accepted run r1) to 0.8000" in decision.reasons[0]


def test_gate_blocks_a_slow_slide_below_the_reference_run() -> None:
    last = Baseline("last accepted run", {"hybrid_ndcg_at_10": 0.86, "hybrid_recall_at_10": 1.0}, "r9")
    reference = Baseline("reference run", {"hybrid_ndcg_at_10": 0.95, "hybrid_recall_at_10": 1.0}, "r1")
    current = {"hybrid_ndcg_at_10": 0.85, "hybrid_recall_at_10": 1.0}
    assert gate(current, [last], 0.02).passed  # within the tolerance of the last run...
    decision = gate(current, [last, reference], 0.02)  # ...but 0.10 below the reference
    assert not decision.passed
    assert [r for r in decision.reasons if "fell" in r] == [
        "hybrid_ndcg_at_10 fell from 0.9500 (reference run r1) to 0.8500 (tolerance 0.02)"
    ]


def test_queries_about_documents_no_longer_indexed_count_as_misses() -> None:
    golden = GoldenSet({"q1": "x", "q2": "y"}, {"q1": {"a": 1}, "q2": {"z": 1}})
    scores = score_runs(golden, {"q1": rank_documents(["a"]), "q2": {}})
    assert scores["q2"]["ndcg_at_10"] == 0.0 and len(scores) == 2
