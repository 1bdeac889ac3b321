"""A floor on how well the shown context matches the question: below it the system abstains.

The 135M model abstains on under half of the yardstick's unanswerable questions, in every recipe
measured (bench/results/lora_recipes). Retrieval can tell them apart: the cosine similarity between
the question and the best window shown to the model separates answerable from unanswerable items
(bench/relevance_floor.py). So when no shown window reaches `ANSWER_RELEVANCE_FLOOR`, the answer is the
house abstention, without generating; above it the model answers (and may still abstain).

Answering (`pipelines ask`, the answering service) and evaluation (the gate, the benchmarks) apply the
same floor to every model, so what is measured is what a reader gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.behaviour.house_format import ContextChunk


def best_similarity(embedder: Any, question: str, contexts: Sequence[ContextChunk]) -> float:
    """The highest cosine similarity between the question and a shown context window (0.0 when none is shown)."""
    if not contexts:
        return 0.0
    return float(embedder.similarities(question, [c.text for c in contexts]).max())


def below_floor(similarity: float, floor: float) -> bool:
    """True when the context is too far from the question to answer from; a floor of 0 turns the check off."""
    return floor > 0 and similarity < floor
