"""Context-aware decoding for grounded answers: the default recipe decoded with and without context guidance.

    python bench/context_guidance.py [--grid 1.0 1.25 1.5 1.75 2.5] [--adapter DIR]

Context-aware decoding (Shi et al., 2023, "Trusting Your Evidence") scores each next token as
uncond + g * (cond - uncond), where cond sees the retrieved contexts and uncond the same question without
them; transformers implements it as classifier-free guidance (`guidance_scale`, `negative_prompt_ids`),
and `ANSWER_CONTEXT_GUIDANCE` turns it on for answering and evaluation alike.

Trains the default recipe once (what a `retrain_lora` run trains; or loads `--adapter`), then:
1. on the tuning half only, decodes the candidate at every guidance in `--grid` and picks the one with the
   highest strict grounding whose answerable-item format stays >= 0.95 of plain decoding's (ties: lower g);
2. on all 96 items, scores base and candidate at plain decoding (1.0) and at the chosen guidance, with the
   gate's verdict for each, and reports the reporting half.
Writes bench/results/context_guidance.json (per-item outputs included). About 25 min on two idle cores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchkit import load_note

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import evaluate_model, forgetting, split_summary
from pipelines.behaviour.gate import decide
from pipelines.behaviour.retrain import RetrainRequest, summarise
from pipelines.behaviour.training import train_adapter
from pipelines.behaviour.yardstick import item_kind_and_split
from pipelines.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"
HALF_KEYS = ("format_compliance", "rouge_l", "grounded_strict", "grounded_lenient", "abstention", "false_abstention",
             "served_grounded_strict", "served_abstention", "served_false_abstention")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=float, nargs="+", default=[1.0, 1.25, 1.5, 1.75, 2.5])
    parser.add_argument("--adapter", type=Path, help="a saved adapter of the default recipe (skips training)")
    args = parser.parse_args()
    settings = get_settings()
    request = RetrainRequest.from_settings(settings, {"eval_items": 0})
    data = load_training_data(request.data_dir)
    base = resolve_base_model(settings)
    tokenizer, model = load_tokenizer(base), load_model(base)
    started = time.perf_counter()
    if args.adapter:
        from peft import PeftModel

        candidate = PeftModel.from_pretrained(model, str(args.adapter)).eval()
    else:
        candidate = train_adapter(model, tokenizer, data.train, request.train).model
    train_s = time.perf_counter() - started

    def config(guidance: float) -> Any:
        return replace(request.evaluation, context_guidance=guidance)

    # 1. Choose on the tuning half only (the candidate alone: the knob is a decoding choice for the champion).
    tuning = [r for r in data.eval if item_kind_and_split(r)[1] == "tuning"]
    grid: dict[str, dict[str, float]] = {}
    for g in args.grid:
        began = time.perf_counter()
        report = evaluate_model(f"candidate@{g}", candidate, tokenizer, tuning, data.ood[:1], config(g))
        half = split_summary(report, "tuning")
        grid[str(g)] = {**{k: half[k] for k in HALF_KEYS}, "seconds": time.perf_counter() - began}
        print(f"tuning half, guidance {g}: {json.dumps(grid[str(g)])}", flush=True)
    floor = 0.95 * grid[str(args.grid[0])]["format_compliance"]
    chosen = max((g for g in args.grid if grid[str(g)]["format_compliance"] >= floor),
                 key=lambda g: (grid[str(g)]["grounded_strict"], -g))  # fmt: skip
    print(f"chosen on the tuning half: {chosen}", flush=True)

    # 2. Both halves, base and candidate, plain and chosen; the gate's verdict for each decoding.
    results: dict[str, Any] = {}
    items: list[dict[str, Any]] = []
    for g in sorted({1.0, chosen}):
        with candidate.disable_adapter():  # the base model: the same weights with the adapter switched off
            base_report = evaluate_model("base", candidate, tokenizer, data.eval, data.ood, config(g))
        cand_report = evaluate_model("candidate", candidate, tokenizer, data.eval, data.ood, config(g))
        summary = summarise([base_report, cand_report], champion=None)
        cand_scores, base_scores = summary.gate_scores("candidate"), summary.gate_scores("base")
        assert cand_scores is not None and base_scores is not None
        verdict = decide(cand_scores, base_scores, None, request.thresholds)
        results[str(g)] = {
            role: {half: {k: split_summary(r, half)[k] for k in HALF_KEYS} for half in ("tuning", "reporting")}
            for role, r in (("base", base_report), ("candidate", cand_report))
        }
        results[str(g)]["forgetting"] = forgetting(cand_report, base_report)
        results[str(g)]["rouge_l_gain"] = cand_report.rouge_l - base_report.rouge_l
        results[str(g)]["tokens_per_s"] = {"base": base_report.tokens_per_s, "candidate": cand_report.tokens_per_s}
        results[str(g)]["gate"] = {"passed": verdict.passed, "reasons": verdict.reasons, "metrics": verdict.metrics}
        items += [{**asdict(i), "guidance": g} for i in base_report.items + cand_report.items]
        print(f"guidance {g}: " + json.dumps({k: v for k, v in results[str(g)].items() if k != "gate"}), flush=True)
        print(f"guidance {g}: gate {verdict.summary()}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "context_guidance.json"
    out.write_text(json.dumps({
        "command": "python bench/context_guidance.py --grid " + " ".join(map(str, args.grid)),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine_note": load_note(),
        "base_model": request.base_model,
        "train_config": asdict(request.train),
        "eval_config": asdict(request.evaluation),
        "adapter": str(args.adapter) if args.adapter else f"trained here ({train_s:.0f} s)",
        "selection_rule": "tuning half only: highest strict grounding with format >= 0.95 x plain decoding's; "
        "ties: lower g",
        "tuning_grid": grid,
        "chosen": chosen,
        "results": results,
        "items": items,
    }, indent=2, default=str))  # fmt: skip
    print(f"saved {out}")


if __name__ == "__main__":
    main()
