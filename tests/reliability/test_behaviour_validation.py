"""Training data that teaches the test fails validation, exactly copied or nearly (word 3-gram overlap)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.behaviour.base_model import load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import InstructionRecord, Message, TrainingData, load_training_data
from pipelines.behaviour.validation import DataLimits, near_duplicate, shingles, validate_training_data
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
LEAK = "training record overlaps an eval record"


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return load_training_data(ROOT / "data" / "training")


@pytest.fixture(scope="module")
def tokenizer(settings: Settings):  # type: ignore[no-untyped-def]
    return load_tokenizer(resolve_base_model(settings))


def _reworded(text: str) -> str:
    """One word of a sentence replaced: a near-duplicate that an exact comparison misses."""
    parts = text.split()
    middle = len(parts) // 2
    return " ".join([*parts[:middle], "notably", *parts[middle + 1 :]])


def test_near_duplicate_of_an_eval_answer_is_detected_and_unrelated_text_is_not(data: TrainingData) -> None:
    answer = data.eval[0].reference
    references = [shingles(answer)]
    assert near_duplicate(_reworded(answer), references)
    assert not near_duplicate(data.train[0].reference, references)


def test_training_record_nearly_copying_an_eval_record_fails_validation(data: TrainingData, tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = data.eval[3]
    question, answer = source.messages[0].content, source.messages[1].content
    near = InstructionRecord(
        "train-near-copy",
        (Message("user", _reworded(question)), Message("assistant", _reworded(answer))),
        source.contexts,
    )
    assert near.question != source.question and near.reference != source.reference  # not an exact copy
    report = validate_training_data(dataclasses.replace(data, train=[*data.train[:30], near]), tokenizer, DataLimits())
    assert not report.passed
    leaks = [f for f in report.failures if f.reason.startswith(LEAK)]
    assert leaks and leaks[0].examples == ["train-near-copy"], report.summary()


def test_shipped_training_data_has_no_near_duplicate_of_the_eval_set(data: TrainingData, tokenizer) -> None:  # type: ignore[no-untyped-def]
    report = validate_training_data(data, tokenizer, DataLimits())
    assert not [f for f in report.failures if f.reason.startswith(LEAK)], report.summary()
