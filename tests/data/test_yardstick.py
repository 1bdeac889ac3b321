"""The held-out yardstick (data/training/eval.jsonl, issue 14 item 1): enough in-domain items, each with
its report and passage, an abstention set, both halves filled, and kept apart from training."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from pipelines.behaviour.dataset import Message, load_training_data
from pipelines.behaviour.house_format import abstention_answer, format_answer, parse_answer
from pipelines.behaviour.yardstick import held_out_chunks, item_kind_and_split, read_yardstick, report_of

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ROOT / "data" / "training"
ITEMS = read_yardstick(TRAINING / "eval.jsonl")


def _relevant() -> dict[str, set[str]]:
    judged: dict[str, set[str]] = {}
    for line in (ROOT / "data" / "golden" / "qrels.tsv").read_text().splitlines()[1:]:
        query, report, score = line.split("\t")
        if int(score) > 0:
            judged.setdefault(query, set()).add(report)
    return judged


def test_at_least_sixty_in_domain_items_and_an_abstention_set_in_both_halves() -> None:
    counts = Counter((i.kind, i.split) for i in ITEMS)
    in_domain = sum(n for (kind, _), n in counts.items() if kind != "abstention")
    assert in_domain >= 60, counts
    assert counts["query", "reporting"] + counts["passage", "reporting"] >= 30, counts
    assert counts["abstention", "reporting"] >= 10 and counts["abstention", "tuning"] >= 10, counts
    assert counts["passage", "reporting"] >= 5 and counts["passage", "tuning"] >= 5, counts


def test_every_in_domain_item_names_its_report_and_quotes_its_passage_under_the_right_label() -> None:
    for item in (i for i in ITEMS if i.kind != "abstention"):
        parsed = parse_answer(item.record.reference)
        assert parsed is not None and len(parsed.labels) == 1, item.record.id
        (cited,) = [c for c in item.record.contexts if c.label == parsed.labels[0]]
        assert report_of(cited.chunk_id) == item.report, item.record.id
        assert item.passage in cited.text and item.record.reference == format_answer(item.passage, parsed.labels)


def test_passage_questions_are_readable_and_name_their_report() -> None:
    for item in (i for i in ITEMS if i.kind == "passage"):
        question = item.record.question
        assert question.startswith("According to '") and question.endswith("?"), question
        assert 6 <= len(question.split()) <= 30, question


def test_abstention_items_show_no_chunk_of_a_report_that_holds_the_answer() -> None:
    relevant = _relevant()
    for item in (i for i in ITEMS if i.kind == "abstention"):
        assert item.record.reference == abstention_answer(), item.record.id
        excluded = relevant.get(item.split_key, set()) | {report_of(item.split_key)}
        shown = {report_of(c.chunk_id) for c in item.record.contexts}
        assert not shown & excluded, item.record.id


def test_kind_and_half_follow_from_the_record_id_alone() -> None:
    assert all(item_kind_and_split(i.record) == (i.kind, i.split) for i in ITEMS)


def test_training_never_shows_or_answers_from_a_yardstick_source_chunk() -> None:
    held = held_out_chunks(ITEMS)
    train = load_training_data(TRAINING).train
    assert held and not {c.chunk_id for r in train for c in r.contexts} & held


@pytest.mark.slow
def test_the_leakage_check_refuses_training_records_copying_a_passage_item_or_its_question(settings) -> None:  # type: ignore[no-untyped-def]
    from pipelines.behaviour.base_model import load_tokenizer, resolve_base_model
    from pipelines.behaviour.validation import DataLimits, validate_training_data

    data = load_training_data(TRAINING)
    passage = next(i.record for i in ITEMS if i.kind == "passage")
    copied = dataclasses.replace(passage, id="copies-passage-answer")
    asked = dataclasses.replace(
        data.train[0],
        id="asks-passage-question",
        messages=(Message("user", passage.question), data.train[0].messages[1]),
    )
    tokenizer = load_tokenizer(resolve_base_model(settings))
    limits = DataLimits(pii_patterns=tuple(settings.pii_patterns))
    assert validate_training_data(data, tokenizer, limits).passed  # the shipped split is clean
    report = validate_training_data(
        dataclasses.replace(data, train=data.train[:30] + [copied, asked]), tokenizer, limits
    )
    (leak,) = [f for f in report.failures if "leakage" in f.reason]
    assert set(leak.examples) == {"copies-passage-answer", "asks-passage-question"}, report.summary()
