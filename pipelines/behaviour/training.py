"""LoRA fine-tuning of the base model on the instruction records (transformers + peft).

A short, explicit training loop instead of `Trainer`: loss only on the answer
tokens, batches grouped by length so little compute goes into padding, AdamW on
the adapter weights alone, warm-up then linear decay, gradient clipping. The
same code runs on a CPU (float32) and a GPU (bfloat16 autocast).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.behaviour.dataset import InstructionRecord
from pipelines.behaviour.house_format import chat_messages

log = logging.getLogger(__name__)
IGNORE = -100  # label value the loss skips (prompt and padding tokens)


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one training run; the defaults finish in minutes on two CPU cores."""

    steps: int = 40
    epochs: float = 0.0  # > 0 overrides `steps` with whole passes over the data
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")
    # Adapt only the top N decoder layers (0 = all): backward then stops at the lowest adapted layer,
    # which on a CPU cuts the cost of a step by more than half for a small loss in capacity.
    top_layers: int = 0
    max_seq_len: int = 384
    # Weight of a KL penalty that keeps the adapted model's next-token distribution on the *prompt* tokens
    # (system text, question, retrieved contexts: plain English) close to the base model's, so the adapter
    # changes how answers are written and not the language model underneath (out-of-domain forgetting).
    # 0 = off: the loss is the answer cross-entropy alone, and a step costs no extra base forward pass.
    kl_weight: float = 0.0
    # Prompt positions per batch the KL is estimated on (drawn at random): the LM head is 49k x 576 on
    # SmolLM2, and projecting all ~1,000 prompt positions twice would cost more than the sample's accuracy buys.
    kl_positions: int = 128
    # Rows of each batch the base pass runs on (0 = all). Two of four halve the pass's cost: 360 steps took 736 s
    # on two rows and 895 s on all four (bench/results/lora_recipes/*-kl*.json, 2 CPU cores).
    kl_rows: int = 2
    warmup_ratio: float = 0.1
    seed: int = 13
    log_every: int = 5

    def total_steps(self, records: int) -> int:
        """Optimizer steps: `epochs` passes when set, else `steps`."""
        return max(1, math.ceil(self.epochs * records / self.batch_size)) if self.epochs > 0 else self.steps

    def as_params(self) -> dict[str, str]:
        """Flat string values for MLflow params."""
        return {k: ",".join(v) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Example:
    """One tokenised record: input ids and labels (prompt masked out)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainResult:
    """What a run produced: the adapter-wrapped model and how training went."""

    model: Any
    losses: list[tuple[int, float]] = field(default_factory=list)  # answer cross-entropy, per logging window
    drift: list[tuple[int, float]] = field(default_factory=list)  # KL to the base on prompt tokens, when on
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1] if self.losses else float("nan")


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tokenize_record(tokenizer: Any, record: InstructionRecord, max_seq_len: int) -> Example:
    """Chat-template the record; the loss sees only the assistant answer and its end token."""
    prompt = _ids(
        tokenizer.apply_chat_template(chat_messages(record.question, record.contexts), add_generation_prompt=True)
    )
    full = _ids(tokenizer.apply_chat_template(chat_messages(record.question, record.contexts, record.reference)))
    full = full[:max_seq_len]
    # The full chat starts with the prompt's tokens: mask them (and nothing after), so the model is
    # graded on writing the answer, not on predicting the question and sources it was given.
    labels = [IGNORE] * min(len(prompt), len(full)) + full[len(prompt) :]
    return Example(full, labels)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches of indices: shuffled each epoch, then sorted by length inside windows of 16 batches."""
    rng = random.Random(seed)
    batches: list[list[int]] = []
    window = batch_size * 16
    while len(batches) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for start in range(0, len(order), window):
            group = sorted(order[start : start + window], key=lambda i: lengths[i])
            chunk = [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
            rng.shuffle(chunk)
            batches.extend(chunk)
    return batches[:steps]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest example."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def add_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap the base model with fresh LoRA adapters on the attention projections."""
    from peft import LoraConfig, get_peft_model

    layers = model.config.num_hidden_layers
    top = list(range(layers - config.top_layers, layers)) if 0 < config.top_layers < layers else None
    lora = LoraConfig(
        layers_to_transform=top,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Cross-entropy on answer tokens, projecting only those positions onto the vocabulary.

    The LM head of a small model is a large share of its compute (SmolLM2: 49k x 576);
    running it on the ~15% of positions that carry a label saves that share.
    """
    return answer_and_drift(model, batch)[0]


def prompt_positions(batch: dict[str, Any]) -> Any:
    """(row, position) of every hidden state that predicts a prompt token (not an answer token, not padding)."""
    # Hidden state t predicts token t+1 (as in answer_loss): read labels and mask shifted by one.
    prompt = (batch["labels"][:, 1:] == IGNORE) & (batch["attention_mask"][:, 1:] == 1)
    return prompt.nonzero()


def answer_and_drift(
    model: Any, batch: dict[str, Any], kl_positions: int = 0, generator: Any = None, kl_rows: int = 0
) -> tuple[Any, Any | None]:
    """Answer cross-entropy, and (when `kl_positions` > 0) KL(base || adapted) on sampled prompt positions.

    The positions are drawn from `kl_rows` rows of the batch chosen at random (0: all rows).

    The KL's base side is the same model with its adapter switched off (peft's `disable_adapter`), run
    without gradients. Layers below the lowest adapted one compute the same states with the adapter on or
    off, so the base pass starts from the adapted pass's input to that layer: with the top 16 of 30 layers
    adapted, that halves the extra cost (+45 % a step for a full second forward, measured on 2 CPU cores).
    """
    import torch

    causal_lm = model.get_base_model()
    head, decoder = causal_lm.get_output_embeddings(), causal_lm.get_decoder()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    out = decoder(**inputs, output_hidden_states=kl_positions > 0)
    hidden = out[0]
    # Position t predicts token t+1: shift labels left by one and drop the last hidden state.
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE  # answer tokens only; the mean below is over them, not over the prompt
    ce = torch.nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep])
    if kl_positions <= 0:
        return ce, None
    where = prompt_positions(batch)
    if 0 < kl_rows < len(batch["input_ids"]):  # the base pass runs on these rows only
        chosen = torch.randperm(len(batch["input_ids"]), generator=generator)[:kl_rows]
        where = where[torch.isin(where[:, 0], chosen)]
    where = where[torch.randperm(len(where), generator=generator)[:kl_positions]]
    if not len(where):  # no prompt token at all (a record cut to its answer): nothing to hold near the base
        return ce, ce.new_zeros(())
    rows, cols = where[:, 0].to(hidden.device), where[:, 1].to(hidden.device)
    used, slot = torch.unique(rows, return_inverse=True)  # slot: a sampled row's index among the rows passed
    first = lowest_adapted_layer(model)
    with torch.no_grad(), model.disable_adapter(), _only_layers_from(decoder, first):
        # hidden_states[i] is the input to layer i (index 0: the token embeddings).
        start = out.hidden_states[first][used]
        mask = batch["attention_mask"][used]
        base_hidden = decoder(inputs_embeds=start, attention_mask=mask, use_cache=False)[0]
        base = torch.log_softmax(head(base_hidden[slot, cols]).float(), dim=-1)
    adapted = torch.log_softmax(head(hidden[rows, cols]).float(), dim=-1)
    drift = torch.nn.functional.kl_div(adapted, base, log_target=True, reduction="batchmean")
    return ce, drift


def lowest_adapted_layer(model: Any) -> int:
    """Index of the lowest decoder layer carrying a LoRA adapter (0 when every layer does)."""
    chosen = model.peft_config[model.active_adapter].layers_to_transform
    return min(chosen) if chosen else 0


@contextlib.contextmanager
def _only_layers_from(decoder: Any, first: int) -> Iterator[None]:
    """Let `decoder` run only its layers from `first` on, for one forward pass; restored afterwards."""
    import torch

    layers = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(layers)[first:])
    try:
        yield
    finally:
        decoder.layers = layers


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and GPU) so a run can be repeated."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def train_adapter(
    model: Any,
    tokenizer: Any,
    records: Sequence[InstructionRecord],
    config: TrainConfig,
    on_log: Callable[[int, int, float, float], None] | None = None,
) -> TrainResult:
    """Train LoRA adapters on `records`; `on_log(step, total, loss, tokens_per_s)` reports progress."""
    import torch

    seed_everything(config.seed)
    examples = [tokenize_record(tokenizer, r, config.max_seq_len) for r in records]
    total = config.total_steps(len(examples))
    batches = length_grouped_batches([len(e.input_ids) for e in examples], config.batch_size, total, config.seed)
    peft_model = add_lora(model, config)
    device = next(peft_model.parameters()).device
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    # Factor on `learning_rate`: linear warm-up over the first `warmup_ratio` of steps (AdamW's moment
    # estimates are noisy at first, so full-size early steps overshoot), then linear decay to 0 at the last step.
    warmup = max(1, int(total * config.warmup_ratio))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    result = TrainResult(model=peft_model)
    # The KL's positions come from their own generator, so switching it on leaves dropout's random stream alone.
    sampler = torch.Generator().manual_seed(config.seed)
    kl_positions = config.kl_positions if config.kl_weight > 0 else 0
    peft_model.train()
    started, window_loss, window_steps, window_drift = time.perf_counter(), 0.0, 0, 0.0
    for step, batch_ids in enumerate(batches, start=1):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_ids], tokenizer.pad_token_id).items()}
        with autocast:
            loss, drift = answer_and_drift(peft_model, batch, kl_positions, sampler, config.kl_rows)
        if drift is not None:
            (loss + config.kl_weight * drift).backward()
            window_drift += float(drift.detach())
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # a long answer in a small batch must not kick the adapter
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        result.tokens += int(batch["attention_mask"].sum())
        window_loss, window_steps = window_loss + float(loss.detach()), window_steps + 1
        if step % config.log_every == 0 or step == total:
            result.seconds = time.perf_counter() - started
            result.losses.append((step, window_loss / window_steps))
            if kl_positions:
                result.drift.append((step, window_drift / window_steps))
            log.info(
                "step %d/%d  loss %.4f  KL to base %.4f  %.0f tokens/s",
                step,
                total,
                window_loss / window_steps,
                window_drift / window_steps,
                result.tokens_per_s,
            )
            if on_log:
                on_log(step, total, window_loss / window_steps, result.tokens_per_s)
            window_loss, window_steps, window_drift = 0.0, 0, 0.0
    result.seconds = time.perf_counter() - started
    peft_model.eval()
    return result


def plot_losses(losses: Sequence[tuple[int, float]], path: Path) -> Path:
    """Save the loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("LoRA training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
