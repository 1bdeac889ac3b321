"""Quality of the shipped LoRA defaults: base model vs candidate, reported, not asserted.

    python bench/lora_quality.py [--steps N] [--learning-rate LR] [--top-layers N] [--eval-items N]

Trains SmolLM2-135M-Instruct (or BASE_MODEL) with exactly what a `retrain_lora` run uses (settings'
LORA_* defaults; flags override them for a quick check) and scores base and candidate with the DAG's
`evaluate_model` on the held-out questions and the out-of-domain texts. With the defaults about 12.5 min of
training on two idle CPU cores, plus about 6 min of evaluation with EVAL_ITEMS=0 (all 96 yardstick items).
Prints the table, both halves, the verdict the promotion gate gives a first run and the training time, and
writes the raw numbers to bench/results/lora_quality.json. `tests/model` asserts the same behaviours on a
shorter run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import evaluate_model, forgetting, split_summary, summary_table
from pipelines.behaviour.gate import decide
from pipelines.behaviour.retrain import RetrainRequest, summarise
from pipelines.behaviour.training import train_adapter
from pipelines.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="optimizer steps (default LORA_STEPS)")
    parser.add_argument("--learning-rate", type=float, help="default LORA_LEARNING_RATE")
    parser.add_argument("--top-layers", type=int, help="adapt only the top N layers, 0 = all (default LORA_TOP_LAYERS)")
    parser.add_argument("--eval-items", type=int, help="held-out questions per model (default EVAL_ITEMS)")
    parser.add_argument("--kl-weight", type=float, help="KL to the base on prompt tokens (default LORA_KL_WEIGHT)")
    parser.add_argument("--out", type=Path, default=RESULTS / "lora_quality.json", help="where the raw results go")
    parser.add_argument("--save-adapter", type=Path, help="also save the trained adapter here (peft format)")
    args = parser.parse_args()
    settings = get_settings()
    request = RetrainRequest.from_settings(
        settings,
        {
            "steps": args.steps,
            "learning_rate": args.learning_rate,
            "eval_items": args.eval_items,
            "kl_weight": args.kl_weight,
        },
    )
    train = request.train if args.top_layers is None else replace(request.train, top_layers=args.top_layers)
    data = load_training_data(request.data_dir)
    base = resolve_base_model(settings)
    tokenizer, model = load_tokenizer(base), load_model(base)

    before = evaluate_model("base", model, tokenizer, data.eval, data.ood, request.evaluation)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_adapter(model, tokenizer, data.train, train)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if args.save_adapter:  # for bench/context_guidance.py --adapter, or answering by hand
        result.model.save_pretrained(str(args.save_adapter))
    after = evaluate_model("candidate", result.model, tokenizer, data.eval, data.ood, request.evaluation)

    rise, gain = forgetting(after, before), after.rouge_l - before.rouge_l
    # The verdict a first `retrain_lora` run (no champion yet) would get on these scores, read as its decide step does.
    summary = summarise([before, after], champion=None)
    candidate, base = summary.gate_scores("candidate"), summary.gate_scores("base")
    assert candidate is not None and base is not None
    verdict = decide(candidate, base, None, request.thresholds)
    halves = {split: split_summary(after, split) for split in ("tuning", "reporting")}
    print(summary_table([before, after]))
    for split, values in halves.items():
        print(f"candidate, {split} half: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"gate: {verdict.summary()}")
    print(f"ROUGE-L gain over base: {gain:+.3f} (gate: >= {request.thresholds.min_gain_over_base})")
    print(f"forgetting (OOD cross-entropy vs base): {rise:+.2%} (gate: <= {request.thresholds.max_forgetting:.0%})")
    print(f"training: {train.total_steps(len(data.train))} steps, {wall:.0f} s wall, {cpu:.0f} s CPU")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                "base_model": request.base_model,
                "train_config": asdict(train),
                "eval_config": asdict(request.evaluation),
                "thresholds": asdict(request.thresholds),
                "train_wall_s": wall,
                "train_cpu_s": cpu,
                "train_tokens_per_s": result.tokens_per_s,
                "losses": result.losses,
                "kl_to_base": result.drift,
                "rouge_l_gain": gain,
                "forgetting": rise,
                "metrics": {**before.metrics(), **after.metrics()},
                "candidate_halves": halves,
                "gate_passed": verdict.passed,
                "gate_reasons": verdict.reasons,
                "gate_metrics": verdict.metrics,
                "ood_losses": {"base": before.ood_losses, "candidate": after.ood_losses},
                "items": [asdict(i) for i in before.items + after.items],
            },
            indent=2,
        )
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
