"""The promotion gate: does a candidate adapter deserve to become `champion`?

Pure logic over evaluation summaries, so it is unit-tested without models. A
candidate passes when it beats the base model and the current champion on the
in-domain score (ROUGE-L of the answer), follows the house format at least as
often, forgets little general English, and is not less grounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PromotionPolicy(StrEnum):
    """`auto`: a passing challenger becomes champion; `manual`: a person decides."""

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True)
class GateThresholds:
    """Configurable margins of the gate."""

    min_gain_over_base: float = 0.05  # ROUGE-L points the candidate must add over the base model
    min_gain_over_champion: float = 0.0  # ... and over the champion (strictly more than this)
    max_forgetting: float = 0.05  # allowed relative rise of OOD cross-entropy over the base model
    grounding_tolerance: float = 0.0  # how far grounding may fall below the champion's


@dataclass(frozen=True)
class Scores:
    """The numbers the gate reads for one model."""

    rouge_l: float
    format_compliance: float
    grounding: float
    ood_cross_entropy: float


@dataclass(frozen=True)
class PromotionGateDecision:
    """The verdict, every reason behind it, and the numbers it was based on."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return ("PASSED: " if self.passed else "FAILED: ") + "; ".join(self.reasons)


@dataclass(frozen=True)
class PromotionOutcome:
    """What happens to a gated candidate: `promoted`, `awaiting approval` or `rejected`."""

    status: str
    promoted: bool


def promotion_outcome(passed: bool, policy: PromotionPolicy, holds: list[str]) -> PromotionOutcome:
    """Only a passing candidate, under policy auto, with nothing holding it (a moved champion, a changed
    yardstick) is promoted automatically; a passing one that is held waits for a person."""
    if not passed:
        return PromotionOutcome("rejected", False)
    if holds or policy is not PromotionPolicy.AUTO:
        return PromotionOutcome("awaiting approval", False)
    return PromotionOutcome("promoted", True)


def decide(
    candidate: Scores, base: Scores, champion: Scores | None, thresholds: GateThresholds
) -> PromotionGateDecision:
    """Apply every rule; the candidate passes only if all hold."""
    checks: list[tuple[bool, str]] = []
    gain = candidate.rouge_l - base.rouge_l
    checks.append(
        (gain >= thresholds.min_gain_over_base, f"ROUGE-L {candidate.rouge_l:.3f} vs base {base.rouge_l:.3f} "
         f"(gain {gain:+.3f}, need >= {thresholds.min_gain_over_base:+.3f})")
    )  # fmt: skip
    checks.append(
        (candidate.format_compliance >= base.format_compliance,
         f"format compliance {candidate.format_compliance:.2f} vs base {base.format_compliance:.2f}")
    )  # fmt: skip
    rise = (candidate.ood_cross_entropy - base.ood_cross_entropy) / base.ood_cross_entropy
    checks.append(
        (rise <= thresholds.max_forgetting,
         f"OOD cross-entropy {rise:+.1%} over base (allowed {thresholds.max_forgetting:+.1%})")
    )  # fmt: skip
    metrics = {"gate.gain_over_base": gain, "gate.forgetting": rise}
    if champion is None:
        checks.append((True, "no champion yet"))
    else:
        lead = candidate.rouge_l - champion.rouge_l
        metrics["gate.gain_over_champion"] = lead
        checks.append(
            (lead > thresholds.min_gain_over_champion,
             f"ROUGE-L {candidate.rouge_l:.3f} vs champion {champion.rouge_l:.3f} "
             f"(gain {lead:+.3f}, need > {thresholds.min_gain_over_champion:+.3f})")
        )  # fmt: skip
        checks.append(
            (candidate.format_compliance >= champion.format_compliance,
             f"format compliance {candidate.format_compliance:.2f} vs champion {champion.format_compliance:.2f}")
        )  # fmt: skip
        checks.append(
            (candidate.grounding >= champion.grounding - thresholds.grounding_tolerance,
             f"grounding {candidate.grounding:.2f} vs champion {champion.grounding:.2f} "
             f"(tolerance {thresholds.grounding_tolerance:.2f})")
        )  # fmt: skip
    passed = all(ok for ok, _ in checks)
    reasons = [("ok: " if ok else "FAIL: ") + text for ok, text in checks]
    return PromotionGateDecision(passed=passed, reasons=reasons, metrics=metrics)
