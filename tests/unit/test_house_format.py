"""The house answer format, grounding check and token-F1 (pure functions)."""

from __future__ import annotations

from pipelines.behaviour.house_format import (
    ContextChunk,
    check_grounding,
    format_answer,
    parse_answer,
    token_f1,
)

CONTEXTS = [
    ContextChunk(1, "a", "Banking", "Banks that embed precision capture disproportionate rewards in the age of AI."),
    ContextChunk(2, "b", "Cars", "Buyers in China value charging speed above brand."),
]


def test_a_formatted_answer_parses_back_to_its_parts() -> None:
    parsed = parse_answer(format_answer("Buyers value charging speed.", [2, 1]))
    assert parsed is not None and parsed.answer == "Buyers value charging speed." and parsed.labels == (2, 1)


def test_free_text_and_missing_sources_break_the_format() -> None:
    assert parse_answer("Banks should be precise.") is None
    assert parse_answer("Answer: Banks should be precise.") is None
    assert parse_answer("Answer: x\nSources: 1") is None


def test_an_answer_copied_from_its_cited_source_is_grounded() -> None:
    parsed = parse_answer("Answer: Buyers in China value charging speed above brand.\nSources: [2]")
    assert parsed is not None
    result = check_grounding(parsed, CONTEXTS)
    assert result.citations_exist and result.grounded and result.support == 1.0


def test_citing_the_wrong_source_or_a_missing_one_is_not_grounded() -> None:
    wrong = parse_answer("Answer: Buyers in China value charging speed above brand.\nSources: [1]")
    missing = parse_answer("Answer: Buyers in China value charging speed above brand.\nSources: [7]")
    assert wrong is not None and missing is not None
    assert not check_grounding(wrong, CONTEXTS).grounded
    missing_result = check_grounding(missing, CONTEXTS)
    assert not missing_result.citations_exist and not missing_result.grounded


def test_token_f1_rewards_overlap() -> None:
    assert token_f1("charging speed matters", "charging speed matters") == 1.0
    assert token_f1("nothing alike", "charging speed") == 0.0
    assert 0 < token_f1("charging speed is key", "speed of charging matters") < 1
