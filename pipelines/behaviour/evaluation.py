"""Evaluate a model on the held-out records and the out-of-domain set.

In-domain quality: house-format compliance, ROUGE-L and token-F1 of the answer
against the reference. Grounding: cited labels exist among the given sources and
the answer's words come from the cited text; per answer sentence, the cited chunk
supports it strictly or leniently (`pipelines.behaviour.grounding`). Abstention: on
items whose contexts hold no answer, the model says so. The gate judges the model alone; with
`relevance_floor` set, the `served_*` shares also say what a reader gets, where answering abstains
without the model on an item whose shown context is too far from the question
(`pipelines.behaviour.relevance`). Forgetting: per-token
cross-entropy on general text. Speed: generated tokens per second (greedy, batched).
Every item keeps its kind (query, passage, abstention) and half (tuning, reporting),
so the reporting half is summarised on its own (`split_summary`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.behaviour.dataset import InstructionRecord, OodText
from pipelines.behaviour.grounding import SentenceSupport, ground_answer
from pipelines.behaviour.house_format import chat_messages, check_grounding, is_abstention, parse_answer, token_f1
from pipelines.behaviour.relevance import below_floor, best_similarity
from pipelines.knowledge.embedding import shared_embedder


@dataclass(frozen=True)
class EvalConfig:
    """How much to evaluate: a subset keeps CPU runs short."""

    items: int = 12  # the first N held-out records; 0 = all of them
    max_new_tokens: int = 64
    batch_size: int = 4
    context_guidance: float = 1.0  # Settings.answer_context_guidance: 1.0 is plain greedy decoding
    min_support: float = 0.8
    # Answering's relevance floor (pipelines.behaviour.relevance): items below it count as abstentions in the
    # `served_*` shares, as a reader would get them; the gate's own scores are the model's alone. 0: off.
    relevance_floor: float = 0.0
    embedding_model_path: str = ""


@dataclass(frozen=True)
class ItemResult:
    """One held-out record scored for one model."""

    model: str
    record_id: str
    question: str
    output: str
    reference: str
    format_ok: bool
    rouge_l: float
    token_f1: float
    citations_exist: bool
    support: float
    grounded: bool
    kind: str = "query"  # query, passage or abstention (pipelines.behaviour.yardstick)
    split: str = ""  # tuning or reporting (pipelines.evalsplit)
    grounded_strict: bool = False  # every answer sentence strictly supported by a chunk it cites
    grounded_lenient: bool = False
    abstained: bool = False  # the answer says the sources do not hold it
    sentences: tuple[SentenceSupport, ...] = ()
    relevance: float = math.nan  # best question-context similarity (nan when the floor is off)
    below_floor: bool = False  # answering would abstain here without running the model (relevance floor)

    @property
    def answerable(self) -> bool:
        return self.kind != "abstention"

    @property
    def right(self) -> bool:
        """Grounded for an answerable item, an abstention for an unanswerable one: the gate's per-item score."""
        return self.grounded_strict if self.answerable else self.abstained


@dataclass
class ModelReport:
    """Aggregate scores of one model (base, candidate or champion)."""

    model: str
    format_compliance: float
    rouge_l: float
    token_f1: float
    citation_validity: float
    grounding: float
    ood_cross_entropy: float
    tokens_per_s: float
    items: list[ItemResult] = field(default_factory=list)
    grounded_strict: float = 0.0  # share of answerable items whose every sentence a cited chunk supports (strict)
    grounded_lenient: float = 0.0
    abstention: float = 0.0  # share of unanswerable items the model refused (nan when none was evaluated)
    false_abstention: float = 0.0  # share of answerable items the model refused
    # The same three as a reader gets them: below the relevance floor answering abstains without the model.
    served_grounded_strict: float = 0.0
    served_abstention: float = 0.0
    served_false_abstention: float = 0.0
    ood_losses: list[float] = field(default_factory=list)  # summed token loss per OOD text, for paired intervals

    def per_item(self) -> dict[str, list[float]]:
        """The per-item scores the gate resamples (pipelines.behaviour.gate)."""
        return {
            "rouge_l": [i.rouge_l for i in self.items],
            "format_ok": [float(i.format_ok) for i in self.items],
            "grounded": [float(i.right) for i in self.items],
            "ood_loss": list(self.ood_losses),
        }

    def metrics(self) -> dict[str, float]:
        """Flat metrics, prefixed with the model's role, for MLflow."""
        values = {k: v for k, v in asdict(self).items() if isinstance(v, float)}
        return {f"{self.model}.{k}": float(v) for k, v in values.items()}


def _answer_text(output: str) -> str:
    parsed = parse_answer(output)
    return parsed.answer if parsed else output.strip()


def score_item(
    model: str, record: InstructionRecord, output: str, min_support: float = 0.8, kind: str = "query", split: str = ""
) -> ItemResult:
    """Score one generated output against the record's reference answer."""
    from rouge_score import rouge_scorer

    reference = _answer_text(record.reference)
    answer = _answer_text(output)
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, answer)["rougeL"].fmeasure
    parsed = parse_answer(output)
    grounding = check_grounding(parsed, record.contexts, min_support) if parsed else None
    # Unparsed output is scored as a whole answer citing nothing: never grounded.
    sentences = ground_answer(answer, parsed.labels if parsed else (), record.contexts)
    return ItemResult(
        model=model,
        record_id=record.id,
        question=record.question,
        output=output,
        reference=record.reference,
        format_ok=parsed is not None,
        rouge_l=rouge,
        token_f1=token_f1(answer, reference),
        citations_exist=bool(grounding and grounding.citations_exist),
        support=grounding.support if grounding else 0.0,
        grounded=bool(grounding and grounding.grounded),
        kind=kind,
        split=split,
        grounded_strict=sentences.strict,
        grounded_lenient=sentences.lenient,
        abstained=is_abstention(answer),
        sentences=sentences.sentences,
    )


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 4,
    streamer: Any = None,
    guidance: float = 1.0,
    negatives: Sequence[list[dict[str, str]]] | None = None,
) -> tuple[list[str], int, float]:
    """Greedy answers to chat prompts: (texts, generated tokens, seconds).

    `streamer` (a transformers streamer, with batch_size 1) receives tokens as they are generated. With
    `guidance` above 1, each prompt's `negatives` entry (the same question without contexts) is the
    unconditional branch of transformers' classifier-free guidance: context-aware decoding.
    """
    import torch

    if guidance != 1.0 and (negatives is None or len(negatives) != len(prompts)):
        raise ValueError("context guidance needs one context-free prompt per prompt")
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    # The guidance branch runs without position ids, so left padding would shift its positions: one at a time.
    step = 1 if guidance != 1.0 else batch_size
    texts, new_tokens, seconds = [], 0, 0.0
    for start in range(0, len(prompts), step):
        chats = [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
            for p in prompts[start : start + step]
        ]
        batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        extra: dict[str, Any] = {}
        if guidance != 1.0:
            assert negatives is not None
            chat = tokenizer.apply_chat_template(negatives[start], add_generation_prompt=True, tokenize=False)
            negative = tokenizer([chat], return_tensors="pt", add_special_tokens=False).to(device)
            extra = {
                "guidance_scale": guidance,
                "negative_prompt_ids": negative["input_ids"],
                "negative_prompt_attention_mask": negative["attention_mask"],
            }
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                streamer=streamer,
                **extra,
            )
        seconds += time.perf_counter() - began
        generated = out[:, batch["input_ids"].shape[1] :]
        new_tokens += int((generated != tokenizer.pad_token_id).sum())
        texts.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return texts, new_tokens, seconds


def ood_cross_entropy(model: Any, tokenizer: Any, texts: Sequence[OodText], batch_size: int = 8) -> float:
    """Mean per-token cross-entropy (nats) of the model on plain general text."""
    losses, tokens = ood_losses(model, tokenizer, texts, batch_size)
    return sum(losses) / sum(tokens) if sum(tokens) else math.nan


def ood_losses(
    model: Any, tokenizer: Any, texts: Sequence[OodText], batch_size: int = 8
) -> tuple[list[float], list[int]]:
    """Per text: summed token cross-entropy (nats) and token count (the same for every model of one tokenizer)."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "right"
    per_text: list[float] = []
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer([t.text for t in texts[start : start + batch_size]], return_tensors="pt", padding=True).to(
            device
        )
        with torch.no_grad():
            logits = model(**batch).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        per_text += [float(row[m].sum()) for row, m in zip(losses, mask, strict=True)]
        counts += [int(m.sum()) for m in mask]
    return per_text, counts


def evaluate_model(
    name: str,
    model: Any,
    tokenizer: Any,
    records: Sequence[InstructionRecord],
    ood: Sequence[OodText],
    config: EvalConfig,
) -> ModelReport:
    """Score one model on the first `config.items` held-out records and on the OOD set."""
    from pipelines.behaviour.yardstick import item_kind_and_split

    subset = list(records[: config.items] if config.items > 0 else records)
    prompts = [chat_messages(r.question, r.contexts) for r in subset]
    negatives = [chat_messages(r.question, []) for r in subset]  # used only with context guidance
    outputs, new_tokens, seconds = generate(
        model, tokenizer, prompts, config.max_new_tokens, config.batch_size, None, config.context_guidance, negatives
    )
    relevance = context_relevance(subset, config)
    items = [
        dataclasses.replace(
            score_item(name, r, o, config.min_support, *item_kind_and_split(r)),
            relevance=sim,
            below_floor=below_floor(sim, config.relevance_floor),
        )
        for r, o, sim in zip(subset, outputs, relevance, strict=True)
    ]
    losses, tokens = ood_losses(model, tokenizer, ood)  # once: the aggregate and the per-text values
    ood_ce = sum(losses) / sum(tokens) if sum(tokens) else math.nan
    return report_from_items(name, items, ood_ce, losses, new_tokens / seconds if seconds else 0.0)


def report_from_items(
    name: str, items: Sequence[ItemResult], ood_ce: float, losses: Sequence[float], tokens_per_s: float
) -> ModelReport:
    """The aggregate scores of scored items (bench/relevance_floor.py re-scores recorded outputs through it)."""
    n = len(items) or 1
    return ModelReport(
        model=name,
        format_compliance=sum(i.format_ok for i in items) / n,
        rouge_l=sum(i.rouge_l for i in items) / n,
        token_f1=sum(i.token_f1 for i in items) / n,
        # Of the answers that cite (every one but an abstention, which rightly cites none), those whose labels exist.
        citation_validity=_share([i.citations_exist for i in items if not i.abstained]),
        grounding=sum(i.grounded for i in items) / n,
        ood_cross_entropy=ood_ce,
        tokens_per_s=tokens_per_s,
        items=list(items),
        ood_losses=list(losses),
        **_grounding_shares(items),
    )


def context_relevance(records: Sequence[InstructionRecord], config: EvalConfig) -> list[float]:
    """Each record's best question-context similarity, or nan for all when the floor is off."""
    if config.relevance_floor <= 0:
        return [math.nan] * len(records)
    embedder = shared_embedder(config.embedding_model_path)
    return [best_similarity(embedder, r.question, r.contexts) for r in records]


def _share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else math.nan


def _grounding_shares(items: Sequence[ItemResult]) -> dict[str, float]:
    answerable = [i for i in items if i.answerable]
    unanswerable = [i for i in items if not i.answerable]
    return {
        "grounded_strict": _share([i.grounded_strict for i in answerable]),
        "grounded_lenient": _share([i.grounded_lenient for i in answerable]),
        "abstention": _share([i.abstained for i in unanswerable]),
        "false_abstention": _share([i.abstained for i in answerable]),
        # As served: answering abstains without the model below the relevance floor (pipelines.behaviour.relevance).
        "served_grounded_strict": _share([i.grounded_strict and not i.below_floor for i in answerable]),
        "served_abstention": _share([i.abstained or i.below_floor for i in unanswerable]),
        "served_false_abstention": _share([i.abstained or i.below_floor for i in answerable]),
    }


def split_summary(report: ModelReport, split: str) -> dict[str, float]:
    """Aggregates over one half (`tuning` or `reporting`) of the evaluated items."""
    items = [i for i in report.items if i.split == split]
    answerable = [i for i in items if i.answerable]
    return {
        "items": float(len(items)),
        "format_compliance": _share([i.format_ok for i in answerable]),
        "rouge_l": sum(i.rouge_l for i in answerable) / len(answerable) if answerable else math.nan,
        **_grounding_shares(items),
    }


def forgetting(candidate: ModelReport, base: ModelReport) -> float:
    """Relative rise of OOD cross-entropy over the base model (0.05 = 5% worse)."""
    return (candidate.ood_cross_entropy - base.ood_cross_entropy) / base.ood_cross_entropy


def summary_table(reports: Sequence[ModelReport]) -> str:
    """A Markdown table of the aggregate scores, one row per model."""
    columns = (
        "format_compliance",
        "rouge_l",
        "token_f1",
        "citation_validity",
        "grounding",
        "grounded_strict",
        "grounded_lenient",
        "abstention",
        "ood_cross_entropy",
        "tokens_per_s",
    )
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in reports:
        lines.append(f"| {r.model} | " + " | ".join(f"{getattr(r, c):.3f}" for c in columns) + " |")
    return "\n".join(lines)
