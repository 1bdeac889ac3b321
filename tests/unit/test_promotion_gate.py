"""The promotion gate's rules (pure logic)."""

from __future__ import annotations

import random

import pytest

from pipelines.behaviour.gate import GateThresholds, Scores, decide, gate_table
from pipelines.behaviour.intervals import mean_gain, ratio_rise

N = 60  # items, as in the held-out yardstick
OOD_TEXTS = 25


def _scores(rouge: list[float], fmt: float, grounded: float, ood_rise: float = 0.0, seed: int = 0) -> Scores:
    """Per-item scores: ROUGE-L as given, format/grounding as 0/1 items with the given share, OOD losses."""
    rng = random.Random(seed)
    fmt_items = [1.0 if i < round(fmt * N) else 0.0 for i in range(N)]
    grounded_items = [1.0 if i < round(grounded * N) else 0.0 for i in range(N)]
    ood = [(100.0 + 7 * i) * (1 + ood_rise + rng.uniform(-0.005, 0.005)) for i in range(OOD_TEXTS)]
    items = {"rouge_l": rouge, "format_ok": fmt_items, "grounded": grounded_items, "ood_loss": ood}
    return Scores(sum(rouge) / N, fmt, grounded, sum(ood) / OOD_TEXTS, items)


def _rouge(mean: float, seed: int, spread: float = 0.15) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, mean + rng.uniform(-spread, spread))) for _ in range(N)]


BASE_ROUGE = _rouge(0.20, seed=1)
BASE = _scores(BASE_ROUGE, fmt=0.0, grounded=0.0)
GOOD_ROUGE = [min(1.0, r + 0.4) for r in BASE_ROUGE]
GOOD = _scores(GOOD_ROUGE, fmt=1.0, grounded=0.8, ood_rise=0.01)


def test_a_clear_improvement_without_a_champion_passes() -> None:
    decision = decide(GOOD, BASE, None, GateThresholds())
    assert decision.passed, decision.reasons
    assert decision.intervals["rouge_l.vs_base"].low > 0.3


def test_a_candidate_no_better_than_base_fails() -> None:
    decision = decide(_scores(_rouge(0.21, seed=2), 1.0, 0.8), BASE, None, GateThresholds())
    assert not decision.passed
    assert any("ROUGE-L vs base" in r and r.startswith("FAIL") for r in decision.reasons)


def test_too_much_forgetting_fails() -> None:
    decision = decide(_scores(GOOD_ROUGE, 1.0, 0.8, ood_rise=0.10), BASE, None, GateThresholds(max_forgetting=0.05))
    assert not decision.passed
    assert any("OOD" in r and r.startswith("FAIL") for r in decision.reasons)


def test_a_candidate_worse_than_the_champion_fails() -> None:
    worse = _scores([r - 0.2 for r in GOOD_ROUGE], 1.0, 0.5)
    decision = decide(worse, BASE, GOOD, GateThresholds())
    assert not decision.passed
    failed = [r for r in decision.reasons if r.startswith("FAIL")]
    assert any("ROUGE-L vs champion" in r for r in failed) and any("grounding vs champion" in r for r in failed)


def test_a_clearly_better_candidate_than_the_champion_passes() -> None:
    better = _scores([min(1.0, r + 0.1) for r in GOOD_ROUGE], 1.0, 0.9, ood_rise=0.01)
    decision = decide(better, BASE, GOOD, GateThresholds())
    assert decision.passed, decision.reasons
    assert decision.intervals["rouge_l.vs_champion"].low > 0.0


def test_a_candidate_equal_to_the_champion_within_noise_is_refused_naming_metric_and_interval() -> None:
    # Same mean as the champion, items jittered both ways: the point estimate may come out ahead by chance,
    # the interval straddles zero, so the gate refuses.
    rng = random.Random(7)
    jitter = [rng.choice((-0.05, 0.05)) for _ in range(N)]
    noisy = _scores([r + j for r, j in zip(GOOD_ROUGE, jitter, strict=True)], 1.0, 0.8, ood_rise=0.01)
    decision = decide(noisy, BASE, GOOD, GateThresholds())
    assert not decision.passed
    interval = decision.intervals["rouge_l.vs_champion"]
    assert interval.low < 0 < interval.high
    (reason,) = [r for r in decision.reasons if r.startswith("FAIL")]
    assert "ROUGE-L vs champion" in reason and f"CI {interval.low:+.3f}, {interval.high:+.3f}" in reason


def test_an_identical_candidate_is_refused() -> None:
    decision = decide(GOOD, BASE, GOOD, GateThresholds())
    assert not decision.passed
    assert any(r.startswith("FAIL: ROUGE-L vs champion") for r in decision.reasons)


def test_scores_without_per_item_values_fail_closed() -> None:
    bare = Scores(0.9, 1.0, 1.0, 3.0)
    decision = decide(bare, BASE, None, GateThresholds())
    assert not decision.passed
    assert any("no paired per-item scores" in r for r in decision.reasons)


def test_gate_table_lists_every_rule_with_its_interval() -> None:
    decision = decide(GOOD, BASE, None, GateThresholds())
    table = gate_table(decision)
    assert "ROUGE-L vs base" in table and "OOD cross-entropy" in table
    assert f"{decision.intervals['rouge_l.vs_base'].low:+.3f}" in table


def test_the_bootstrap_is_deterministic_and_its_interval_contains_the_estimate() -> None:
    a, b = _rouge(0.5, seed=3), _rouge(0.45, seed=4)
    first, second = mean_gain(a, b), mean_gain(a, b)
    assert first == second and first.low < first.estimate < first.high
    with pytest.raises(ValueError, match="differ in length"):
        mean_gain(a, b[:-1])
    rise = ratio_rise([110.0, 220.0, 330.0, 108.0], [100.0, 200.0, 300.0, 100.0])
    assert rise.low <= rise.estimate <= rise.high and rise.estimate == pytest.approx(768 / 700 - 1)


def test_fewer_than_two_items_give_an_unbounded_interval() -> None:
    one = mean_gain([1.0], [0.0])
    assert one.low == float("-inf") and one.high == float("inf")


def test_a_passing_candidate_held_by_a_moved_champion_or_a_new_yardstick_waits_for_a_person() -> None:
    from pipelines.behaviour.gate import PromotionPolicy, promotion_outcome

    held = promotion_outcome(True, PromotionPolicy.AUTO, ["yardstick changed since champion v1 was promoted"])
    assert (held.status, held.promoted) == ("awaiting approval", False)
    assert promotion_outcome(True, PromotionPolicy.AUTO, []).promoted
    assert promotion_outcome(False, PromotionPolicy.AUTO, ["x"]).status == "rejected"
    assert promotion_outcome(True, PromotionPolicy.MANUAL, []).status == "awaiting approval"


def test_a_diverged_candidate_fails_the_gate_with_a_reason_instead_of_crashing_it() -> None:
    """NaN OOD losses (a diverged adapter): the summary stays JSON for XCom and the gate records a FAIL."""
    import json
    import math
    from dataclasses import asdict

    from pipelines.behaviour.evaluation import ItemResult, ModelReport
    from pipelines.behaviour.retrain import EvaluationSummary, summarise

    def report(model: str, rouge: float, ood: list[float]) -> ModelReport:
        items = [
            ItemResult(model, f"r{i}", "q", "out", "ref", True, rouge + 0.01 * (i % 5), 0.5, True, 1.0, True)
            for i in range(30)
        ]
        mean_ood = sum(ood) / len(ood)
        return ModelReport(model, 1.0, rouge, 0.5, 1.0, 1.0, mean_ood, 10.0, items, ood_losses=ood)

    base = report("base", 0.1, [100.0 + i for i in range(25)])
    diverged = report("candidate", 0.6, [math.nan] * 25)
    summary = summarise([base, diverged], champion=None)
    assert "ood_cross_entropy" not in summary.scores["candidate"]  # not finite: left out of the aggregates
    restored = EvaluationSummary(**json.loads(json.dumps(asdict(summary), allow_nan=False)))  # as XCom carries it
    candidate, base_scores = restored.gate_scores("candidate"), restored.gate_scores("base")
    assert candidate is not None and base_scores is not None and math.isnan(candidate.ood_cross_entropy)
    decision = decide(candidate, base_scores, None, GateThresholds())
    assert not decision.passed
    assert any(r.startswith("FAIL: OOD cross-entropy rise over base") for r in decision.reasons), decision.reasons
    assert any(r.startswith("ok: ROUGE-L vs base") for r in decision.reasons)  # the other rules still judged


def test_the_gate_evaluates_with_the_decoding_answering_uses() -> None:
    """A champion judged under plain decoding but served with context guidance would be judged on other answers."""
    from pipelines.behaviour.retrain import RetrainRequest
    from pipelines.settings import Settings

    settings = Settings().model_copy(update={"answer_context_guidance": 1.25})
    assert RetrainRequest.from_settings(settings, {}).evaluation.context_guidance == 1.25


def test_context_guidance_without_a_context_free_prompt_per_question_is_refused() -> None:
    from pipelines.behaviour.evaluation import generate

    with pytest.raises(ValueError, match="one context-free prompt per prompt"):
        generate(None, None, [[{"role": "user", "content": "q"}]] * 2, 8, guidance=1.25, negatives=[[]])


def test_a_champion_served_with_another_decoding_than_it_was_gated_with_is_flagged() -> None:
    from pipelines.behaviour.answering import decoding_note

    assert decoding_note("1.25", 1.25) is None and decoding_note(None, 1.0) is None  # untagged: plain decoding
    assert "gated at ANSWER_CONTEXT_GUIDANCE=1 but served at 1.25" in (decoding_note(None, 1.25) or "")
    assert "unreadable" in (decoding_note("fast", 1.0) or "")
