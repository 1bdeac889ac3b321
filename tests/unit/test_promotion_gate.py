"""The promotion gate's rules (pure logic)."""

from __future__ import annotations

from pipelines.behaviour.gate import GateThresholds, Scores, decide

BASE = Scores(rouge_l=0.20, format_compliance=0.0, grounding=0.0, ood_cross_entropy=3.00)
GOOD = Scores(rouge_l=0.60, format_compliance=1.0, grounding=0.8, ood_cross_entropy=3.05)


def test_a_clear_improvement_without_a_champion_passes() -> None:
    decision = decide(GOOD, BASE, None, GateThresholds())
    assert decision.passed, decision.reasons


def test_a_candidate_no_better_than_base_fails() -> None:
    decision = decide(Scores(0.22, 1.0, 0.8, 3.0), BASE, None, GateThresholds())
    assert not decision.passed
    assert any("vs base" in r and r.startswith("FAIL") for r in decision.reasons)


def test_too_much_forgetting_fails() -> None:
    decision = decide(Scores(0.6, 1.0, 0.8, 3.3), BASE, None, GateThresholds(max_forgetting=0.05))
    assert not decision.passed
    assert any("OOD" in r and r.startswith("FAIL") for r in decision.reasons)


def test_a_candidate_worse_than_the_champion_fails() -> None:
    worse = Scores(0.40, 1.0, 0.5, 3.0)
    decision = decide(worse, BASE, GOOD, GateThresholds())
    assert not decision.passed
    failed = [r for r in decision.reasons if r.startswith("FAIL")]
    assert any("champion" in r for r in failed) and any("grounding" in r for r in failed)


def test_beating_the_champion_on_every_rule_passes() -> None:
    better = Scores(0.70, 1.0, 0.9, 3.02)
    assert decide(better, BASE, GOOD, GateThresholds()).passed


def test_a_passing_candidate_held_by_a_moved_champion_or_a_new_yardstick_waits_for_a_person() -> None:
    from pipelines.behaviour.gate import PromotionPolicy, promotion_outcome

    held = promotion_outcome(True, PromotionPolicy.AUTO, ["yardstick changed since champion v1 was promoted"])
    assert (held.status, held.promoted) == ("awaiting approval", False)
    assert promotion_outcome(True, PromotionPolicy.AUTO, []).promoted
    assert promotion_outcome(False, PromotionPolicy.AUTO, ["x"]).status == "rejected"
    assert promotion_outcome(True, PromotionPolicy.MANUAL, []).status == "awaiting approval"
