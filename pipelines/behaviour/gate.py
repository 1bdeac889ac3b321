"""The promotion gate: does a candidate adapter deserve to become `champion`?

Pure logic over evaluation summaries, so it is unit-tested without models. A
candidate passes when it beats the base model and the current champion on the
in-domain score (ROUGE-L of the answer), follows the house format at least as
often, forgets little general English, and is not less grounded. Every rule reads
a paired bootstrap interval over the eval items (`pipelines.behaviour.intervals`),
not a point estimate: 12 or 60 items leave a few points of noise, and a gain inside
that noise is no gain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pipelines.behaviour.intervals import Interval, mean_gain, ratio_rise


class PromotionPolicy(StrEnum):
    """`auto`: a passing challenger becomes champion; `manual`: a person decides."""

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True)
class GateThresholds:
    """Configurable margins of the gate, applied to the lower (or, for forgetting, upper) confidence bound."""

    min_gain_over_base: float = 0.05  # ROUGE-L points the candidate must add over the base model
    min_gain_over_champion: float = 0.0  # ... and over the champion (strictly more than this)
    max_forgetting: float = 0.05  # allowed relative rise of OOD cross-entropy over the base model
    grounding_tolerance: float = 0.0  # how far grounding may fall below the champion's
    format_tolerance: float = 0.0  # how far format compliance may fall below base's and the champion's


# Per-item score names in `Scores.items`: one value per eval item (the same items, in the same order,
# for every model), and per OOD text its summed token loss.
ROUGE_L, FORMAT_OK, GROUNDED, OOD_LOSS = "rouge_l", "format_ok", "grounded", "ood_loss"


@dataclass(frozen=True)
class Scores:
    """The numbers the gate reads for one model: aggregates, and the per-item scores behind them."""

    rouge_l: float
    format_compliance: float
    grounding: float
    ood_cross_entropy: float
    items: Mapping[str, Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PromotionGateDecision:
    """The verdict, every reason behind it, and the numbers it was based on."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)  # rule -> confidence interval of its gain

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


def _interval(metric: str, candidate: Scores, other: Scores) -> Interval | None:
    c, o = candidate.items.get(metric), other.items.get(metric)
    if c is None or o is None or len(c) != len(o):
        return None
    return ratio_rise(c, o) if metric == OOD_LOSS else mean_gain(c, o)


def _check(
    label: str, metric: str, candidate: Scores, other: Scores, role: str, need: float, strictly: bool = False
) -> tuple[bool, str, Interval | None]:
    """The lower bound of the candidate's gain over `other` on `metric` must clear `need`."""
    interval = _interval(metric, candidate, other)
    need += 0.0  # no "-0.000" in the reasons
    bound = f"need lower bound {'>' if strictly else '>='} {need:+.3f}"
    if interval is None:  # fail closed: a gain nobody can bound is not a gain
        return False, f"{label} vs {role}: no paired per-item scores to bound the gain ({bound})", None
    ok = interval.low > need if strictly else interval.low >= need
    return ok, f"{label} vs {role}: gain {interval.text()}, {bound}", interval


def decide(
    candidate: Scores, base: Scores, champion: Scores | None, thresholds: GateThresholds
) -> PromotionGateDecision:
    """Apply every rule to paired bootstrap intervals over the eval items; the candidate passes only if all hold.

    Gains must clear their margin at the lower confidence bound, forgetting stays under its bound at the upper
    one: a candidate equal to the champion within noise is refused, never promoted automatically.
    """
    t = thresholds
    rules: list[tuple[str, tuple[bool, str, Interval | None]]] = [
        ("rouge_l.vs_base", _check("ROUGE-L", ROUGE_L, candidate, base, "base", t.min_gain_over_base)),
        ("format.vs_base", _check("format compliance", FORMAT_OK, candidate, base, "base", -t.format_tolerance)),
    ]
    rise = _interval(OOD_LOSS, candidate, base)
    forgetting: tuple[bool, str, Interval | None]
    if rise is None:
        forgetting = (False, "OOD cross-entropy rise over base: no per-text losses to bound the rise", None)
    else:
        forgetting = (
            rise.high <= t.max_forgetting,
            f"OOD cross-entropy rise over base: {rise.text(percent=True)}, need upper bound <= {t.max_forgetting:+.1%}",
            rise,
        )
    rules.append(("forgetting", forgetting))
    if champion is None:
        rules.append(("champion", (True, "no champion yet", None)))
    else:
        rules += [
            (
                "rouge_l.vs_champion",
                _check("ROUGE-L", ROUGE_L, candidate, champion, "champion", t.min_gain_over_champion, strictly=True),
            ),
            (
                "format.vs_champion",
                _check("format compliance", FORMAT_OK, candidate, champion, "champion", -t.format_tolerance),
            ),
            (
                "grounding.vs_champion",
                _check("grounding", GROUNDED, candidate, champion, "champion", -t.grounding_tolerance),
            ),
        ]
    metrics: dict[str, float] = {}
    for name, (_, _, interval) in rules:
        if interval is not None and math.isfinite(interval.low) and math.isfinite(interval.high):
            metrics |= {
                f"gate.{name}.estimate": interval.estimate,
                f"gate.{name}.low": interval.low,
                f"gate.{name}.high": interval.high,
            }
    # The names earlier runs logged, kept for dashboards: the point estimates.
    for old, name in (
        ("gate.gain_over_base", "rouge_l.vs_base"),
        ("gate.forgetting", "forgetting"),
        ("gate.gain_over_champion", "rouge_l.vs_champion"),
    ):
        if f"gate.{name}.estimate" in metrics:
            metrics[old] = metrics[f"gate.{name}.estimate"]
    passed = all(ok for _, (ok, _, _) in rules)
    reasons = [("ok: " if ok else "FAIL: ") + text for _, (ok, text, _) in rules]
    intervals = {name: interval for name, (_, _, interval) in rules if interval is not None}
    return PromotionGateDecision(passed=passed, reasons=reasons, metrics=metrics, intervals=intervals)


def gate_table(decision: PromotionGateDecision) -> str:
    """A Markdown table of the gate's rules: gain, interval, verdict (for the run's summary)."""
    lines = ["| gate rule | estimate | low | high | n | verdict |", "|---|---|---|---|---|---|"]
    for reason in decision.reasons:
        ok = reason.startswith("ok")
        name = next((n for n in decision.intervals if _rule_label(n) in reason), None)
        i = decision.intervals.get(name) if name else None
        cells = f"{i.estimate:+.3f} | {i.low:+.3f} | {i.high:+.3f} | {i.items}" if i else "- | - | - | -"
        lines.append(f"| {reason.split(': ', 1)[1].split(':')[0]} | {cells} | {'pass' if ok else 'FAIL'} |")
    return "\n".join(lines)


def _rule_label(name: str) -> str:
    metric, _, role = name.partition(".vs_")
    label = {"rouge_l": "ROUGE-L", "format": "format compliance", "grounding": "grounding"}.get(metric)
    return f"{label} vs {role}" if label else "OOD cross-entropy rise over base"
