"""The house answer format: how prompts are built and how answers must look.

Prompts list retrieved chunks as numbered sources `[1]`, `[2]`, ...; the house
answer is one extracted sentence followed by the labels it relied on:

    Answer: <a sentence taken from the cited source>
    Sources: [2]

When no source holds the answer, the house answer says so and cites nothing:

    Answer: The sources do not answer this question.
    Sources: none

Because the format is this strict, compliance is a regex and grounding is
checkable: a cited label must exist in the prompt and the answer's words must
appear in the cited text. The base model does not write this on its own; the
LoRA adapter teaches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = "You answer business questions using only the numbered sources you are given."
ANSWER_PATTERN = re.compile(r"^Answer: (?P<answer>[^\n]+)\nSources: (?P<sources>none|\[\d+\](?:, ?\[\d+\])*)\s*$")
# The abstention form: the fixed sentence, and `Sources: none` (a model may word the refusal a little differently).
ABSTENTION = "The sources do not answer this question."
NO_SOURCES = "none"
_ABSTAINS = re.compile(r"\b(?:sources?|context)s? (?:do|does) not (?:answer|say|contain|mention)", re.IGNORECASE)
_LABEL = re.compile(r"\[(\d+)\]")
_WORD = re.compile(r"[a-z0-9]+(?:['’.][a-z0-9]+)*")
# Function words carry no evidence: an answer is "supported" by the content words it shares with its source.
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how in into is it its of on or that the their this "
    "to was were what which will with who why more most than they them these those our we you your".split()
)


@dataclass(frozen=True)
class ContextChunk:
    """One retrieved chunk as shown to the model, under its label `[label]`."""

    label: int
    chunk_id: str
    title: str
    text: str


@dataclass(frozen=True)
class ParsedAnswer:
    """An output that follows the house format, split into its parts."""

    answer: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class GroundingResult:
    """Whether an answer's citations exist and its words come from the cited text."""

    citations_exist: bool
    support: float
    grounded: bool


def words(text: str) -> list[str]:
    """Lower-cased word tokens (the unit of token-F1 and of grounding)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Word tokens without function words."""
    return [w for w in words(text) if w not in STOPWORDS]


def render_user_turn(question: str, contexts: Sequence[ContextChunk]) -> str:
    """The user message: the question, then the numbered sources."""
    sources = "\n".join(f"[{c.label}] {c.title}: {c.text}" for c in contexts)
    return f"Question: {question}\n\nSources:\n{sources}"


def chat_messages(question: str, contexts: Sequence[ContextChunk], answer: str | None = None) -> list[dict[str, str]]:
    """The chat (system, user and, for training, the assistant answer) fed to the tokenizer's template."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": render_user_turn(question, contexts)},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def format_answer(sentence: str, labels: Sequence[int]) -> str:
    """Write an answer in the house format (no labels: the abstention's `Sources: none`)."""
    sources = ", ".join(f"[{n}]" for n in labels) or NO_SOURCES
    return f"Answer: {sentence.strip()}\nSources: {sources}"


def abstention_answer() -> str:
    """The house answer when no source holds the answer."""
    return format_answer(ABSTENTION, [])


def is_abstention(answer: str) -> bool:
    """Whether an answer text says the sources do not hold the answer."""
    return bool(_ABSTAINS.search(answer))


def parse_answer(text: str) -> ParsedAnswer | None:
    """Split a house-format answer into text and cited labels; None when the format is broken."""
    match = ANSWER_PATTERN.match(text.strip())
    if not match:
        return None
    labels = tuple(dict.fromkeys(int(n) for n in _LABEL.findall(match["sources"])))
    return ParsedAnswer(answer=match["answer"].strip(), labels=labels)


def check_grounding(
    answer: ParsedAnswer, contexts: Sequence[ContextChunk], min_support: float = 0.8
) -> GroundingResult:
    """Every cited label must be a given source, and most answer content words must occur in the cited text."""
    by_label = {c.label: c for c in contexts}
    exist = bool(answer.labels) and all(label in by_label for label in answer.labels)
    cited_words = {w for label in answer.labels if label in by_label for w in words(by_label[label].text)}
    claimed = content_words(answer.answer)
    support = sum(w in cited_words for w in claimed) / len(claimed) if claimed else 0.0
    return GroundingResult(citations_exist=exist, support=support, grounded=exist and support >= min_support)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between two texts."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return 0.0
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_window(text: str, question: str, limit: int) -> str:
    """The `limit`-word window of `text` that shares most content words with the question."""
    parts = text.split()
    if len(parts) <= limit:
        return text.strip()
    wanted = set(content_words(question))
    scores = [sum(w in wanted for w in content_words(part)) for part in parts]
    step = max(1, limit // 4)
    best = max(range(0, len(parts) - limit + 1, step), key=lambda i: sum(scores[i : i + limit]))
    return " ".join(parts[best : best + limit]) + " …"
