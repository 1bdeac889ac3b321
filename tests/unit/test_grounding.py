"""Per-sentence grounding: a cited chunk supports a sentence only when it holds its content words in order."""

from __future__ import annotations

from pipelines.behaviour.grounding import LENIENT, STRICT, ground_answer, matched_span, split_sentences, support
from pipelines.behaviour.house_format import ContextChunk, abstention_answer, is_abstention, parse_answer

CHUNK = (
    "Retail banks face margin pressure. Agents promise to be the biggest accelerator of value from AI and "
    "the basis for the AI-first retail bank. Branch visits keep falling."
)
OTHER = "Carbon removal costs must fall below 100 dollars per tonne for the market to grow."
CONTEXTS = [ContextChunk(1, "a_chunk_1", "Banking", CHUNK), ContextChunk(2, "b_chunk_4", "Carbon", OTHER)]


def test_a_quoted_sentence_is_strictly_supported_by_its_chunk_with_the_span_shown() -> None:
    sentence = "Agents promise to be the biggest accelerator of value from AI."
    assert support(sentence, CHUNK) == 1.0
    assert matched_span(sentence, CHUNK) == "Agents promise to be the biggest accelerator of value from AI"


def test_the_same_words_scrambled_are_not_strictly_supported() -> None:
    scrambled = "AI value accelerator biggest promise agents from."
    assert support(scrambled, CHUNK) < STRICT


def test_a_sentence_citing_the_wrong_chunk_is_not_grounded_and_the_right_one_is() -> None:
    answer = "Agents promise to be the biggest accelerator of value from AI. Branch visits keep falling."
    wrong, right = ground_answer(answer, [2], CONTEXTS), ground_answer(answer, [1], CONTEXTS)
    assert not wrong.lenient and right.strict
    assert [s.label for s in right.sentences] == [1, 1] and len(split_sentences(answer)) == 2


def test_one_unsupported_sentence_makes_the_answer_ungrounded_strictly_but_is_scored_alone() -> None:
    answer = "Branch visits keep falling. Banks will close every branch by 2030 and replace staff with robots."
    grounding = ground_answer(answer, [1], CONTEXTS)
    first, second = grounding.sentences
    assert first.strict and second.support < LENIENT and not grounding.strict and not grounding.lenient


def test_boilerplate_is_not_supported_by_a_report_chunk() -> None:
    chrome = "Save It For Later Saved To My Saved Content Download Article Share Link copied Subscribe"
    assert not ground_answer(chrome, [1], CONTEXTS).lenient


def test_the_abstention_form_parses_cites_nothing_and_is_never_counted_as_grounded() -> None:
    parsed = parse_answer(abstention_answer())
    assert parsed is not None and parsed.labels == () and is_abstention(parsed.answer)
    grounding = ground_answer(parsed.answer, parsed.labels, CONTEXTS)
    assert grounding.abstained and not grounding.strict
    assert not is_abstention("Agents promise to be the biggest accelerator of value from AI.")
