"""`ask` never passes off an unsupported citation: a wrong label is corrected to the chunk that supports the
answer, and an answer no shown chunk supports is marked ungrounded. The example is a real output of a
16-step adapter, which copied chunk [3] and cited [2]."""

from __future__ import annotations

from pipelines.behaviour.answering import supporting_labels
from pipelines.behaviour.house_format import ContextChunk

COPIED = "Companies must prepare for a new normal. Many manufacturers have difficulty implementing cloud solutions."
CONTEXTS = [
    ContextChunk(1, "a", "Operations", "Tight margins. Tough decisions. We help you optimize to outperform."),
    ContextChunk(2, "b", "Security", "As demand increases, you need the appropriate infrastructure to support it."),
    ContextChunk(3, "c", "Operations", COPIED + " But for most of them the journey has only started."),
]


def test_a_wrong_label_is_replaced_by_the_chunk_that_supports_the_answer() -> None:
    assert supporting_labels(COPIED, (2,), CONTEXTS) == ([3], True)


def test_a_supporting_label_the_model_wrote_is_kept() -> None:
    assert supporting_labels(COPIED, (3, 2), CONTEXTS) == ([3], False)


def test_an_answer_no_shown_chunk_supports_is_left_ungrounded() -> None:
    assert supporting_labels("Quarterly dividends rose sharply across Asian insurers.", (1,), CONTEXTS) == ([], False)
