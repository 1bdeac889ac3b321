"""Benchmark: training throughput of the pipeline's LoRA loop vs a plain `Trainer` + peft script.

Same base model, same records, same LoRA config, batch size and steps, in one process.
Then the evaluation table (base vs candidate vs current champion, if the registry has one).

    python bench/train.py [--steps 24] [--eval-items 12]

Prints the numbers and writes them to bench/results/train-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import EvalConfig, evaluate_model, forgetting, summary_table
from pipelines.behaviour.retrain import RetrainRequest
from pipelines.behaviour.training import IGNORE, TrainConfig, add_lora, tokenize_record, train_adapter
from pipelines.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"


def plain_trainer_tokens_per_s(base, records, config: TrainConfig) -> float:  # type: ignore[no-untyped-def]
    """The baseline: transformers.Trainer with dynamic padding, same LoRA config and steps."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer, model = load_tokenizer(base), add_lora(load_model(base), config)
    examples = [tokenize_record(tokenizer, r, config.max_seq_len) for r in records]
    dataset = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples
    ]
    tokens = {"n": 0}

    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)

    def count(features):  # type: ignore[no-untyped-def]
        batch = collator(features)
        tokens["n"] += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(
        output_dir=str(RESULTS / "trainer-tmp"), max_steps=config.total_steps(len(dataset)),
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_steps=max(1, int(config.total_steps(len(dataset)) * config.warmup_ratio)), lr_scheduler_type="linear",
        logging_steps=config.log_every, save_strategy="no", report_to=[], seed=config.seed,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=count)
    started = time.perf_counter()
    trainer.train()
    return tokens["n"] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--eval-items", type=int, default=12)
    args = parser.parse_args()
    settings = get_settings()
    data = load_training_data(settings.training_data_dir)
    base = resolve_base_model(settings)
    config = RetrainRequest.from_settings(settings, {"steps": args.steps}).train

    baseline = plain_trainer_tokens_per_s(base, data.train, config)
    tokenizer, model = load_tokenizer(base), load_model(base)
    result = train_adapter(model, tokenizer, data.train, config)
    ratio = result.tokens_per_s / baseline
    print(f"pipeline loop : {result.tokens_per_s:8.1f} tokens/s")
    print(f"plain Trainer : {baseline:8.1f} tokens/s")
    print(f"ratio         : {ratio:8.2f}x")

    evaluation = EvalConfig(items=args.eval_items, max_new_tokens=settings.eval_max_new_tokens)
    peft_model = result.model
    with peft_model.disable_adapter():
        base_report = evaluate_model("base", peft_model, tokenizer, data.eval, data.ood, evaluation)
    reports = [base_report, evaluate_model("candidate", peft_model, tokenizer, data.eval, data.ood, evaluation)]
    try:
        from pipelines.behaviour.registry import CHAMPION, alias_version, download_version

        champion = alias_version(settings, CHAMPION)
    except Exception as err:  # no tracking server running: the table has no champion row
        print(f"(no champion evaluated: {type(err).__name__})")
        champion = None
    if champion:
        peft_model.load_adapter(str(download_version(settings, champion) / "peft"), CHAMPION)  # hash-verified
        peft_model.set_adapter(CHAMPION)
        reports.append(evaluate_model(CHAMPION, peft_model, tokenizer, data.eval, data.ood, evaluation))
    table = summary_table(reports)
    print(table)
    print(f"forgetting (candidate OOD CE vs base): {forgetting(reports[1], reports[0]):+.2%}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "steps": args.steps, "pipeline_tokens_per_s": result.tokens_per_s, "trainer_tokens_per_s": baseline,
        "ratio": ratio, "forgetting": forgetting(reports[1], reports[0]), "table": table,
        "metrics": {k: v for r in reports for k, v in r.metrics().items()},
    }, indent=2))  # fmt: skip
    print(f"saved {out}")


if __name__ == "__main__":
    main()
