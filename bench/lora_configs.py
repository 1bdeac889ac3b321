"""Which LoRA configuration teaches the house format without forgetting general English?

    python bench/lora_configs.py [--items 12] [--only N ...] [--half tuning]

Scores only the tuning half of the held-out items (`pipelines.evalsplit`) unless told otherwise: the LoRA
defaults are chosen there, and `bench/lora_quality.py` / the README report the other half.

Trains SmolLM2-135M-Instruct (or BASE_MODEL) once per configuration below with the pipeline's own
`train_adapter`, and scores base and candidate with the DAG's `evaluate_model` on the held-out
questions and the out-of-domain texts. Slow on a CPU (6-20 min per row on two cores); prints a
Markdown table and writes bench/results/lora-configs-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import EvalConfig, evaluate_model, forgetting
from pipelines.behaviour.retrain import RetrainRequest
from pipelines.behaviour.training import train_adapter
from pipelines.evalsplit import split_of
from pipelines.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"


def eval_split_key(record_id: str) -> str:
    """The id that decides an eval record's half: its golden query (`eval-q_3` -> `q_3`) or source chunk."""
    return record_id.removeprefix("abstain-").removeprefix("eval-").removeprefix("p-")


# (top_layers, steps, learning_rate): 0 layers = all of them.
CONFIGS = [(8, 16, 2e-3), (0, 40, 3e-3), (0, 120, 2e-3), (0, 120, 1e-3), (16, 120, 2e-3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=12, help="held-out questions per model")
    parser.add_argument("--only", type=int, nargs="*", help="indices into CONFIGS to run")
    parser.add_argument(
        "--half",
        choices=("tuning", "reporting", "all"),
        default="tuning",
        help="held-out items to score: LoRA defaults are chosen on the tuning half",
    )
    args = parser.parse_args()
    settings = get_settings()
    request = RetrainRequest.from_settings(settings)
    data = load_training_data(request.data_dir)
    if args.half != "all":
        data = replace(data, eval=[r for r in data.eval if split_of(eval_split_key(r.id)) == args.half])
    base = resolve_base_model(settings)
    tokenizer = load_tokenizer(base)
    evaluation = EvalConfig(items=args.items, max_new_tokens=settings.eval_max_new_tokens)
    base_report = evaluate_model("base", load_model(base), tokenizer, data.eval, data.ood, evaluation)
    rows = [("base model", base_report, None, 0.0)]
    for i, (top, steps, lr) in enumerate(CONFIGS):
        if args.only and i not in args.only:
            continue
        config = replace(request.train, top_layers=top, steps=steps, learning_rate=lr)
        label = f"{'all' if top == 0 else f'top {top}'} layers, {steps} steps, lr {lr:g}"
        started = time.perf_counter()
        result = train_adapter(load_model(base), tokenizer, data.train, config)
        report = evaluate_model("candidate", result.model, tokenizer, data.eval, data.ood, evaluation)
        rows.append((label, report, result.tokens_per_s, time.perf_counter() - started))
        print(f"{label}: {report.metrics()}", flush=True)
    lines = [
        "| configuration | format | ROUGE-L | citations valid | grounded | OOD CE vs base | train tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r, rate, _ in rows:
        rise = "—" if rate is None else f"{forgetting(r, base_report):+.1%}"
        lines.append(
            f"| {label} | {r.format_compliance:.2f} | {r.rouge_l:.3f} | {r.citation_validity:.2f} | "
            f"{r.grounding:.2f} | {rise} | {'—' if rate is None else f'{rate:.0f}'} |"
        )
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lora-configs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            [
                {"configuration": label, "metrics": r.metrics(), "train_tokens_per_s": rate, "seconds": s}
                for label, r, rate, s in rows
            ],
            indent=2,
        )
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
