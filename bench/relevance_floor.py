"""The relevance floor (ANSWER_RELEVANCE_FLOOR): chosen on the tuning half, its effect reported on the other.

    python bench/relevance_floor.py [--recipes bench/results/lora_recipes/*.json]

1. Every yardstick item gets its best question-context similarity (`pipelines.behaviour.relevance`, the
   function answering and evaluation call).
2. The floor is chosen on the tuning half alone, and without any model's answers: the value that best
   separates answerable items from the abstention set (Youden's J: share of abstention items below the floor
   minus share of answerable items below it), the middle of the best plateau.
3. Each recorded recipe run (`bench/lora_quality.py`'s JSON: every item's output for base and candidate) is
   aggregated as evaluation aggregates it with the floor set: the `served_*` shares count an item below the
   floor as the abstention answering gives there without running the model. Above the floor the recorded
   outputs stand, so no model is run and the numbers are exact for those runs. Per run: the reporting half,
   the model alone (what the gate judges) beside what a reader is served, and the verdict the gate would give
   were it fed served outputs (items below the floor re-scored as the abstention, for both models).
4. A sweep of the floor on the reporting half of the shipped recipe, plotted (relevance_floor.png).

Writes bench/results/relevance_floor.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import ItemResult, ModelReport, report_from_items, score_item, split_summary
from pipelines.behaviour.gate import GateThresholds, decide
from pipelines.behaviour.grounding import SentenceSupport
from pipelines.behaviour.house_format import abstention_answer
from pipelines.behaviour.relevance import below_floor, best_similarity
from pipelines.behaviour.retrain import summarise
from pipelines.behaviour.yardstick import item_kind_and_split
from pipelines.knowledge.embedding import shared_embedder
from pipelines.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = "shipped-240-records-120-steps-lr2e-3"  # the recipe and data the project ships (README)
FLOORS = np.round(np.arange(0.10, 0.70, 0.01), 2)  # the similarities seen lie between ~0.05 and ~0.85


def choose_floor(similarity: dict[str, float], answerable: dict[str, bool], split: dict[str, str]) -> dict[str, Any]:
    """Youden's J on the tuning half; the middle of the best plateau (ties favour neither side)."""
    ids = [i for i in similarity if split[i] == "tuning"]
    pos = np.array([similarity[i] for i in ids if answerable[i]])
    neg = np.array([similarity[i] for i in ids if not answerable[i]])
    j = np.array([(neg < f).mean() - (pos < f).mean() for f in FLOORS])
    best = FLOORS[j >= j.max() - 1e-9]
    floor = float(np.round(np.median(best), 2))
    return {"floor": floor, "youden_j": float(j.max()), "plateau": [float(best.min()), float(best.max())]}


def item_from_json(row: dict[str, Any]) -> ItemResult:
    sentences = tuple(SentenceSupport(**s) for s in row.pop("sentences", []))
    fields = {f.name for f in dataclasses.fields(ItemResult)}
    return ItemResult(**{k: v for k, v in row.items() if k in fields}, sentences=sentences)


def recorded_report(run: dict[str, Any], role: str, similarity: dict[str, float], floor: float) -> ModelReport:
    """One model's recorded items, marked as evaluation marks them under `floor`, aggregated as evaluation does."""
    items = []
    for row in run["items"]:
        if row["model"] == role:
            sim = similarity[row["record_id"]]
            item = item_from_json(dict(row))
            items.append(dataclasses.replace(item, relevance=sim, below_floor=below_floor(sim, floor)))
    metrics = run["metrics"]
    losses = run.get("ood_losses", {}).get(role, [])
    return report_from_items(role, items, metrics[f"{role}.ood_cross_entropy"], losses, metrics[f"{role}.tokens_per_s"])


def floored_outputs(report: ModelReport, records: dict[str, Any]) -> ModelReport:
    """The report had the gate been given served outputs: every item below the floor re-scored as the abstention."""
    items = [
        dataclasses.replace(
            score_item(i.model, records[i.record_id], abstention_answer(), 0.8, i.kind, i.split),
            relevance=i.relevance,
            below_floor=True,
        )
        if i.below_floor
        else i
        for i in report.items
    ]
    return report_from_items(report.model, items, report.ood_cross_entropy, report.ood_losses, report.tokens_per_s)


def gate_verdict(reports: dict[str, ModelReport], thresholds: GateThresholds) -> dict[str, Any] | None:
    """The verdict a first retrain run's decide step gives these reports (None: the run kept no OOD losses)."""
    if not reports["base"].ood_losses:
        return None
    summary = summarise([reports["base"], reports["candidate"]], champion=None)
    candidate, base = summary.gate_scores("candidate"), summary.gate_scores("base")
    assert candidate is not None and base is not None
    decision = decide(candidate, base, None, thresholds)
    return {"passed": decision.passed, "reasons": decision.reasons}


def sweep_floor(run: dict[str, Any], similarity: dict[str, float]) -> list[dict[str, Any]]:
    """The candidate's served shares on the reporting half at every floor tried."""
    rows = []
    for f in FLOORS:
        half = split_summary(recorded_report(run, "candidate", similarity, float(f)), "reporting")
        rows.append({"floor": float(f), **clean(half)})
    return rows


def plot(sweep: list[dict[str, Any]], chosen: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    floors = [r["floor"] for r in sweep]
    for key, label in (
        ("served_abstention", "correct abstention (abstention set)"),
        ("served_grounded_strict", "strictly grounded (answerable)"),
        ("served_false_abstention", "false abstention (answerable)"),
    ):
        ax.plot(floors, [r[key] for r in sweep], label=label)
    label = f"floor chosen on the tuning half ({chosen['floor']})"
    ax.axvline(chosen["floor"], color="grey", linestyle="--", label=label)
    ax.set_xlabel("relevance floor (cosine, question vs best shown window)")
    ax.set_ylabel("share, reporting half")
    ax.set_title("Served answers vs relevance floor (shipped adapter, recorded outputs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def verdict_word(verdict: dict[str, Any] | None) -> str:
    return "n/a" if verdict is None else "passed" if verdict["passed"] else "refused"


def clean(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", default=sorted(glob.glob(str(RESULTS / "lora_recipes" / "*.json"))))
    args = parser.parse_args()
    settings = get_settings()
    data = load_training_data(settings.training_data_dir)
    records = {r.id: r for r in data.eval}
    embedder = shared_embedder(settings.embedding_model_path)
    similarity = {r.id: best_similarity(embedder, r.question, r.contexts) for r in data.eval}
    kinds = {r.id: item_kind_and_split(r) for r in data.eval}
    answerable = {i: kind != "abstention" for i, (kind, _) in kinds.items()}
    split = {i: half for i, (_, half) in kinds.items()}
    chosen = choose_floor(similarity, answerable, split)
    floor = chosen["floor"]
    print(f"floor {floor} (tuning half: Youden's J {chosen['youden_j']:.3f}, plateau {chosen['plateau']})")
    for half in ("tuning", "reporting"):
        ids = [i for i in similarity if split[i] == half]
        below_pos = np.mean([similarity[i] < floor for i in ids if answerable[i]])
        below_neg = np.mean([similarity[i] < floor for i in ids if not answerable[i]])
        print(f"  {half}: abstention items below the floor {below_neg:.2f}, answerable items below it {below_pos:.2f}")

    runs = []
    for path in args.recipes:
        run = json.loads(Path(path).read_text())
        if "items" not in run:
            continue
        reports = {role: recorded_report(run, role, similarity, floor) for role in ("base", "candidate")}
        halves = {role: clean(split_summary(r, "reporting")) for role, r in reports.items()}
        thresholds = GateThresholds(**run["thresholds"])
        served = {role: floored_outputs(r, records) for role, r in reports.items()}
        gates = {"model_alone": gate_verdict(reports, thresholds), "served_outputs": gate_verdict(served, thresholds)}
        runs.append({"recipe": Path(path).stem, "reporting": halves, "gate": gates})
        c = halves["candidate"]
        print(
            f"{Path(path).stem}: reporting half, candidate alone -> served: strict {c['grounded_strict']:.2f} -> "
            f"{c['served_grounded_strict']:.2f}, abstention {c['abstention']:.2f} -> {c['served_abstention']:.2f}, "
            f"false abstention {c['false_abstention']:.2f} -> {c['served_false_abstention']:.2f}; gate on the model "
            f"alone / on served outputs: {verdict_word(gates['model_alone'])} / {verdict_word(gates['served_outputs'])}"
        )
    shipped = [p for p in args.recipes if Path(p).stem == SHIPPED]
    sweep = sweep_floor(json.loads(Path(shipped[0]).read_text()), similarity) if shipped else []
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "relevance_floor.json"
    payload = {
        "embedding_model": Path(settings.embedding_model_path).name,
        "chosen": chosen,
        "similarity": {i: {"value": v, "split": split[i], "answerable": answerable[i]} for i, v in similarity.items()},
        "runs": runs,
        "sweep": {"recipe": SHIPPED, "reporting": sweep},
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"saved {out}")
    if sweep:
        print(f"saved {plot(sweep, chosen, RESULTS / 'relevance_floor.png')}")


if __name__ == "__main__":
    main()
