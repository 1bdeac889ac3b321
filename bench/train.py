"""Benchmark: LoRA training throughput of the pipeline's loop against the peers users would pick instead.

    python bench/train.py [--warmup 4] [--measured 16] [--repeats 3] [--threads 2]

Contenders (`--contenders`, default pipeline,trainer,sft; a padding-free contender is timed only when its
correctness check passes, and that check always runs and is recorded):
  pipeline        pipelines.behaviour.training.train_adapter (length-grouped batches, LM head on answer tokens)
  trainer         transformers.Trainer, train_sampling_strategy="group_by_length" (transformers 5's name for
                  group_by_length=True), answer-only labels, dynamic padding
  sft             TRL SFTTrainer, prompt-completion dataset, completion-only loss, group_by_length
  sft_padding_free  the same with padding_free=True (one row per batch, position_ids mark the sequences)
  sft_packing     the same with packing (BFD) to max_length: more records per step, so its loss is not comparable

Fairness: every contender gets the same base model (the project's loader: SmolLM2-135M GGUF dequantised), the
same training records, the same LoRA config (`add_lora`: rank, alpha, dropout, targets, top layers), max sequence
length, batch size, learning rate and schedule, AdamW without weight decay, gradient clipping 1.0, torch thread
count and number of steps. Each is timed from the end of warm-up step N to the end of the last step (a step-end
callback for Trainer/SFTTrainer, the loop's own per-step callback for the pipeline), so set-up, dataset
preparation and the first (cold) steps are excluded. Contenders alternate inside each repeat (the order rotates
per repeat). Tokens/s counts the non-pad tokens of the batches the measured steps actually trained on, counted
the same way for every contender (attention-mask sum; sequence length for padding-free rows). "Final loss" is the
answer-token cross-entropy of the trained adapter on held-out records, computed by one function for all.

Writes bench/results/train.json (or --out) after every run, so an interrupted run keeps its complete repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchkit import scratch_dir

from pipelines.behaviour.base_model import BaseModel, load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import InstructionRecord, load_training_data
from pipelines.behaviour.house_format import chat_messages
from pipelines.behaviour.retrain import RetrainRequest
from pipelines.behaviour.training import (
    IGNORE,
    TrainConfig,
    add_lora,
    answer_loss,
    collate,
    length_grouped_batches,
    tokenize_record,
    train_adapter,
)
from pipelines.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("pipeline", "trainer", "sft", "sft_padding_free", "sft_packing")
DEFAULT_CONTENDERS = ("pipeline", "trainer", "sft")
OPTIONS = ("warmup", "measured", "repeats", "threads", "heldout", "contenders")


@dataclass
class Run:
    """One timed training run of one contender."""

    contender: str
    repeat: int
    tokens_per_s: float
    measured_tokens: int
    measured_s: float
    train_loss_last4: float
    heldout_loss: float


@dataclass
class StepClock:
    """Wall time at the end of every optimizer step and the tokens each step trained on."""

    ends: list[float]
    tokens: list[int]
    losses: list[float]

    def measured(self, warmup: int) -> tuple[int, float]:
        """(tokens, seconds) of the steps after `warmup`: from the end of step `warmup` to the end of the last."""
        return sum(self.tokens[warmup:]), self.ends[-1] - self.ends[warmup - 1]


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-pad tokens of a batch: the attention mask's sum, or the row length of a padding-free batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())  # padding-free: one row, no pad (pad_to_multiple_of=None on CPU)


def heldout_loss(peft_model: Any, tokenizer: Any, records: Sequence[InstructionRecord], config: TrainConfig) -> float:
    """Token-weighted answer cross-entropy on `records` (dropout off), the same function for every contender."""
    import torch

    peft_model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for record in records:
            example = tokenize_record(tokenizer, record, config.max_seq_len)
            batch = collate([example], tokenizer.pad_token_id)
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(answer_loss(peft_model, batch)) * n
            count += n
    return total / max(count, 1)


def run_pipeline(base: BaseModel, records: list[InstructionRecord], config: TrainConfig) -> tuple[Any, StepClock]:
    tokenizer, model = load_tokenizer(base), load_model(base)
    examples = [tokenize_record(tokenizer, r, config.max_seq_len) for r in records]
    # The loop's own batches, rebuilt from the same seed: the tokens each step trains on.
    batches = length_grouped_batches([len(e.input_ids) for e in examples], config.batch_size, config.steps, config.seed)
    per_step = [sum(len(examples[i].input_ids) for i in b) for b in batches]
    clock = StepClock([], per_step, [])

    def on_log(step: int, total: int, loss: float, _rate: float) -> None:
        clock.ends.append(time.perf_counter())
        clock.losses.append(loss)

    result = train_adapter(model, tokenizer, records, replace(config, log_every=1), on_log=on_log)
    return result.model, clock


def trainer_arguments(config: TrainConfig, output_dir: str) -> dict[str, Any]:
    """Arguments shared by Trainer and SFTTrainer, matching the pipeline loop's optimiser and schedule."""
    return {
        "output_dir": output_dir,
        "max_steps": config.steps,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": max(1, int(config.steps * config.warmup_ratio)),
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "use_cpu": True,
        # SFTConfig defaults differ from TrainingArguments: bf16 autocast and activation checkpointing on. The loop
        # trains in float32 without checkpointing on a CPU; the same for every contender.
        "bf16": False,
        "activation_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
    }


def clocked(trainer_class: type) -> tuple[type, StepClock, Any]:
    """A subclass of `trainer_class` that counts each step's tokens, the clock, and the step-end callback."""
    from transformers import TrainerCallback

    clock = StepClock([], [], [])

    class Clocked(trainer_class):  # type: ignore[valid-type, misc]
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            clock.tokens.append(batch_tokens(inputs))
            return super().training_step(model, inputs, num_items_in_batch)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    return Clocked, clock, StepEnd()


def run_trainer(base: BaseModel, records: list[InstructionRecord], config: TrainConfig) -> tuple[Any, StepClock]:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer, model = load_tokenizer(base), add_lora(load_model(base), config)
    examples = [tokenize_record(tokenizer, r, config.max_seq_len) for r in records]
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]  # labels: answer tokens only
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)
    cls, clock, callback = clocked(Trainer)
    args = TrainingArguments(**trainer_arguments(config, str(scratch_dir("bench-trainer-"))))
    trainer = cls(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[callback])
    trainer.train()
    return trainer.model, clock


def prompt_completion(records: Sequence[InstructionRecord]) -> Any:
    """TRL's conversational prompt-completion format: the same chat the pipeline templates."""
    from datasets import Dataset

    rows = []
    for r in records:
        prompt = chat_messages(r.question, r.contexts)
        rows.append({"prompt": prompt, "completion": chat_messages(r.question, r.contexts, r.reference)[len(prompt) :]})
    return Dataset.from_list(rows)


def sft_trainer(base: BaseModel, records: list[InstructionRecord], config: TrainConfig, variant: str):  # type: ignore[no-untyped-def]
    """An SFTTrainer on a fresh LoRA model; `variant` is sft, sft_padding_free or sft_packing."""
    from trl import SFTConfig, SFTTrainer

    tokenizer, model = load_tokenizer(base), add_lora(load_model(base), config)
    extra: dict[str, Any] = {"max_length": config.max_seq_len}
    if variant == "sft_padding_free":
        # TRL refuses max_length without packing in padding-free mode; no record is longer (checked in main).
        extra = {"padding_free": True, "max_length": None, "pad_to_multiple_of": None}
    elif variant == "sft_packing":
        extra = {"packing": True, "packing_strategy": "bfd", "max_length": config.max_seq_len}
    sft_args = {**trainer_arguments(config, str(scratch_dir("bench-sft-"))), **extra}
    if variant != "sft":
        sft_args.pop("train_sampling_strategy")  # one row per batch / packed rows: no lengths to group by
    cls, clock, callback = clocked(SFTTrainer)
    trainer = cls(
        model=model,
        args=SFTConfig(completion_only_loss=True, **sft_args),
        processing_class=tokenizer,
        train_dataset=prompt_completion(records),
        callbacks=[callback],
    )
    return trainer, clock


def run_sft(variant: str) -> Callable[[BaseModel, list[InstructionRecord], TrainConfig], tuple[Any, StepClock]]:
    def run(base: BaseModel, records: list[InstructionRecord], config: TrainConfig) -> tuple[Any, StepClock]:
        trainer, clock = sft_trainer(base, records, config, variant)
        trainer.train()
        return trainer.model, clock

    return run


RUNNERS = {
    "pipeline": run_pipeline,
    "trainer": run_trainer,
    "sft": run_sft("sft"),
    "sft_padding_free": run_sft("sft_padding_free"),
    "sft_packing": run_sft("sft_packing"),
}


def check_same_records(base: BaseModel, records: list[InstructionRecord], config: TrainConfig) -> dict[str, Any]:
    """Does TRL tokenise the records exactly as the pipeline does (ids and loss mask)?"""
    tokenizer = load_tokenizer(base)
    trainer, _ = sft_trainer(base, records, config, "sft")
    ours = [tokenize_record(tokenizer, r, config.max_seq_len) for r in records]
    same_ids = same_labels = 0
    for example, row in zip(ours, trainer.train_dataset, strict=True):  # strict: TRL dropped no record
        same_ids += example.input_ids == row["input_ids"]
        same_labels += example.labels == row["labels"]
    return {
        "records": len(ours),
        "identical_input_ids": same_ids,
        "identical_labels": same_labels,
        "longest_record_tokens": max(len(e.input_ids) for e in ours),
    }


def check_padding_free(base: BaseModel, records: list[InstructionRecord], config: TrainConfig) -> dict[str, Any]:
    """On CPU (sdpa), does a padding-free row give the same loss and gradients as the padded batch?

    Without a block-diagonal mask the sequences of one row would attend to each other: the loss would differ.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = load_tokenizer(base)
    torch.manual_seed(config.seed)
    model = add_lora(load_model(base), replace(config, lora_dropout=0.0))
    model.eval()
    examples = [tokenize_record(tokenizer, r, config.max_seq_len) for r in records[: config.batch_size]]
    features = [
        {"input_ids": e.input_ids, "completion_mask": [int(x != IGNORE) for x in e.labels], "labels": e.labels}
        for e in examples
    ]
    out = {}
    for name, padding_free in (("padded", False), ("padding_free", True)):
        batch = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=padding_free)(
            [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        )
        model.zero_grad()
        loss = model(**batch).loss  # every key TRL's collator makes, as SFTTrainer passes them
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        out[name] = (float(loss.detach()), grad)
    diff = float((out["padded"][1] - out["padding_free"][1]).abs().max())
    return {
        "attn_implementation": str(getattr(model.config, "_attn_implementation", "?")),
        "padded_loss": out["padded"][0],
        "padding_free_loss": out["padding_free"][0],
        "max_abs_grad_difference": diff,
        "correct": abs(out["padded"][0] - out["padding_free"][0]) < 1e-4 and diff < 1e-4,
    }


def summarise(runs: Sequence[Run], contenders: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in contenders:
        mine = [r for r in runs if r.contender == name]
        rates = [r.tokens_per_s for r in mine]
        summary[name] = {
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates),
            "heldout_loss_median": statistics.median(r.heldout_loss for r in mine),
            "heldout_loss_spread": max(r.heldout_loss for r in mine) - min(r.heldout_loss for r in mine),
            "train_loss_last4_median": statistics.median(r.train_loss_last4 for r in mine),
        }
    if "pipeline" in summary:
        # Ratio per repeat (contenders of one repeat ran back to back), then the median of those.
        for name in contenders:
            if name == "pipeline":
                continue
            ratios = []
            for k in sorted({r.repeat for r in runs}):
                pipe = next(r for r in runs if r.contender == "pipeline" and r.repeat == k)
                peer = next(r for r in runs if r.contender == name and r.repeat == k)
                ratios.append(pipe.tokens_per_s / peer.tokens_per_s)
            summary[name]["pipeline_ratio_per_repeat"] = ratios
            summary[name]["pipeline_ratio_median"] = statistics.median(ratios)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=4, help="steps run before the clock starts")
    parser.add_argument("--measured", type=int, default=16, help="timed steps after warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every contender")
    parser.add_argument("--heldout", type=int, default=12, help="held-out eval records for the final loss")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"from {','.join(CONTENDERS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "train.json")
    parser.add_argument("--checks-only", action="store_true", help="only the same-records and padding-free checks")
    args = parser.parse_args()
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}")

    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    settings = get_settings()
    data = load_training_data(settings.training_data_dir)
    base = resolve_base_model(settings)
    steps = args.warmup + args.measured
    config = replace(RetrainRequest.from_settings(settings, {"steps": steps}).train, steps=steps, epochs=0.0)
    heldout = data.eval[: args.heldout]

    checks: dict[str, Any] = {}
    if args.checks_only:
        checks["same_records"] = check_same_records(base, data.train, config)
        checks["padding_free"] = check_padding_free(base, data.train, config)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "command": "python bench/train.py --checks-only",
                    "checks": checks,
                    "versions": {"transformers": transformers.__version__, "trl": trl.__version__},
                },
                indent=2,
            )
        )
        print(json.dumps(checks, indent=2))
        return
    if "sft_padding_free" in contenders:
        checks["padding_free"] = check_padding_free(base, data.train, config)
        if not checks["padding_free"]["correct"]:
            # A wrong loss is no contender: its speed would be the speed of training on contaminated attention.
            contenders.remove("sft_padding_free")
            checks["padding_free"]["timed"] = False

    runs: list[Run] = []

    def save() -> None:
        """Write what is measured so far (summary over complete repeats only): a killed run still leaves data."""
        complete = [r for r in runs if sum(x.repeat == r.repeat for x in runs) == len(contenders)]
        load = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "command": "python bench/train.py " + " ".join(f"--{k} {getattr(args, k)}" for k in OPTIONS),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
                    "machine_note": f"load average {load[0]:.1f} at the last write (the bench alone keeps 2 cores "
                    "busy, about 2.0); "
                    "contenders alternate within each repeat, so compare ratios and medians, not absolutes",
                    "versions": {
                        "torch": torch.__version__,
                        "transformers": transformers.__version__,
                        "trl": trl.__version__,
                    },
                    "config": {
                        **config.as_params(),
                        "warmup_steps_excluded": args.warmup,
                        "measured_steps": args.measured,
                        "threads": args.threads,
                        "heldout_records": len(heldout),
                    },
                    "complete_repeats": len({r.repeat for r in complete}),
                    "checks": checks,
                    "summary": summarise(complete, contenders) if complete else {},
                    "runs": [r.__dict__ for r in runs],
                },
                indent=2,
            )
        )

    for repeat in range(args.repeats):
        order = contenders[repeat % len(contenders) :] + contenders[: repeat % len(contenders)]
        for name in order:
            model, clock = RUNNERS[name](base, data.train, config)
            if len(clock.ends) != steps or len(clock.tokens) != steps:
                raise RuntimeError(f"{name}: {len(clock.ends)} step ends, {len(clock.tokens)} token counts")
            tokens, seconds = clock.measured(args.warmup)
            run = Run(
                name,
                repeat,
                tokens / seconds,
                tokens,
                seconds,
                statistics.fmean(clock.losses[-4:]),
                heldout_loss(model, load_tokenizer(base), heldout, config),
            )
            runs.append(run)
            print(
                f"repeat {repeat} {name:18s} {run.tokens_per_s:8.1f} tokens/s ({tokens} tokens in {seconds:.1f}s)"
                f" train loss (last 4) {run.train_loss_last4:.3f}, held-out {run.heldout_loss:.3f}",
                flush=True,
            )
            del model
            save()

    summary = summarise(runs, contenders)
    print(f"\n{'contender':18s} {'tokens/s median [min-max]':>28s} {'pipeline ratio':>15s} {'held-out loss':>14s}")
    for name, s in summary.items():
        ratio = f"{s['pipeline_ratio_median']:.2f}x" if "pipeline_ratio_median" in s else "-"
        print(
            f"{name:18s} {s['tokens_per_s_median']:10.1f} [{s['tokens_per_s_min']:.1f}-{s['tokens_per_s_max']:.1f}]"
            f"{ratio:>15s} {s['heldout_loss_median']:14.3f}"
        )
    # Checks after the timed runs (they cost minutes on a loaded machine and change no timing).
    checks["same_records"] = check_same_records(base, data.train, config)
    if "padding_free" not in checks:
        checks["padding_free"] = {**check_padding_free(base, data.train, config), "timed": False}
    print(json.dumps(checks, indent=2))
    save()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
