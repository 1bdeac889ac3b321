"""`ask` cites every answer sentence with the chunk and span that support it; STRICT_GROUNDING drops the rest."""

from __future__ import annotations

from pipelines.behaviour.answering import Answer, Citation, Timings, cite_sentences, strict_text
from pipelines.behaviour.house_format import ABSTENTION, ContextChunk
from pipelines.cli import render_answer

BANKING = "Agents promise to be the biggest accelerator of value from AI and the basis for the AI-first retail bank."
CARBON = "The XPRIZE Carbon Removal competition was launched to accelerate this transition to cheaper removal."
CONTEXTS = [
    ContextChunk(1, "carbon_chunk_2", "Carbon removal", CARBON),
    ContextChunk(2, "bank_chunk_7", "From Branches to Bots", BANKING),
]
INVENTED = "Banks will replace every branch with robots by 2030."


def _answer(text: str, sentences_from: list[int], strict: bool = False) -> Answer:
    sentences = cite_sentences(text, sentences_from, CONTEXTS)
    shown, dropped = strict_text(text, sentences) if strict else (text, [])
    citation = Citation(2, "bank_chunk_7", "bank", "From Branches to Bots: Will AI Transform Banking?", "beir://bank")
    return Answer(
        "q",
        shown,
        [citation],
        "test",
        text,
        Timings(0.0, 0.0),
        True,
        contexts=CONTEXTS,
        grounded=True,
        sentences=sentences,
        dropped=dropped,
    )


def test_each_sentence_is_cited_with_its_supporting_chunk_and_span() -> None:
    (sentence,) = cite_sentences(BANKING, [2], CONTEXTS)
    assert sentence.supported and sentence.cited_by_model and sentence.chunk_id == "bank_chunk_7"
    assert sentence.span.startswith("Agents promise") and sentence.support == 1.0


def test_a_sentence_citing_the_wrong_chunk_is_cited_with_the_chunk_that_supports_it() -> None:
    (sentence,) = cite_sentences(BANKING, [1], CONTEXTS)
    assert sentence.supported and sentence.label == 2 and not sentence.cited_by_model


def test_an_unsupported_sentence_is_marked_and_strict_grounding_drops_it() -> None:
    text = f"{BANKING} {INVENTED}"
    first, second = cite_sentences(text, [2], CONTEXTS)
    assert first.supported and not second.supported
    shown, dropped = strict_text(text, [first, second])
    assert shown == BANKING and dropped == [INVENTED]


def test_strict_grounding_turns_an_answer_with_no_supported_sentence_into_the_abstention() -> None:
    shown, dropped = strict_text(INVENTED, cite_sentences(INVENTED, [2], CONTEXTS))
    assert shown == ABSTENTION and dropped == [INVENTED]


def test_the_printed_answer_numbers_its_sources_with_titles_and_marks_unsupported_sentences() -> None:
    printed = render_answer(_answer(f"{BANKING} {INVENTED}", [2]))
    assert printed.startswith("Answer:")
    assert "[1]" in printed and "[unsupported]" in printed
    assert "Sources:\n  1. From Branches to Bots: Will AI Transform Banking?  <beir://bank>" in printed
    assert "Save It For Later" not in printed and "{" not in printed  # prose, not JSON


def test_the_printed_strict_answer_leaves_the_unsupported_sentence_out_and_says_so() -> None:
    printed = render_answer(_answer(f"{BANKING} {INVENTED}", [2], strict=True))
    assert INVENTED not in printed and "left out: STRICT_GROUNDING" in printed
