"""The training records teach grounding, not just format (issue 14 item 3).

Each record shows three numbered contexts; the answer quotes the one that holds it, under its label,
or, when none does, is the house abstention. Checked on the shipped sample (data/training).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.behaviour.dataset import ABSTENTION_SHARE, load_training_data
from pipelines.behaviour.house_format import abstention_answer, content_words, is_abstention, parse_answer

TRAINING = Path(__file__).resolve().parents[2] / "data" / "training"


def _report(chunk_id: str) -> str:
    return chunk_id.rpartition("_chunk_")[0] or chunk_id


def test_the_abstention_share_of_training_records_abstains_over_contexts_that_cannot_answer() -> None:
    data = load_training_data(TRAINING)
    abstaining = [r for r in data.train if r.reference == abstention_answer()]
    assert abs(len(abstaining) - ABSTENTION_SHARE * len(data.train)) <= 1
    for record in abstaining:
        wanted = set(content_words(record.question))
        assert len(record.contexts) == 3, record.id
        assert all(len(wanted & set(content_words(c.text))) <= 1 for c in record.contexts), record.id


def test_answers_quote_exactly_one_context_under_its_own_label() -> None:
    data = load_training_data(TRAINING)
    answering = [r for r in data.train if not is_abstention(r.reference)]
    assert len(answering) >= 150
    for record in answering:
        parsed = parse_answer(record.reference)
        assert parsed is not None and len(parsed.labels) == 1, record.id
        holding = [c.label for c in record.contexts if parsed.answer in c.text]
        assert holding == list(parsed.labels), record.id  # the right label, and no other context holds it
        cited = next(c for c in record.contexts if c.label == parsed.labels[0])
        assert all(_report(c.chunk_id) != _report(cited.chunk_id) for c in record.contexts if c is not cited)


def test_training_never_shows_a_chunk_an_eval_answer_comes_from() -> None:
    data = load_training_data(TRAINING)
    eval_sources = {c.chunk_id for r in data.eval for c in r.contexts if f"[{c.label}]" in r.reference}
    shown_in_training = {c.chunk_id for r in data.train for c in r.contexts}
    assert not eval_sources & shown_in_training
