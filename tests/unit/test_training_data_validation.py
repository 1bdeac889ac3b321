"""The GX gate on training data rejects each kind of bad record, naming it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.behaviour.base_model import load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import InstructionRecord, Message, TrainingData, load_training_data
from pipelines.behaviour.validation import DataLimits, validate_training_data
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return load_training_data(ROOT / "data" / "training")


@pytest.fixture(scope="module")
def tokenizer(settings: Settings):  # type: ignore[no-untyped-def]
    return load_tokenizer(resolve_base_model(settings))


def _with_train(data: TrainingData, extra: list[InstructionRecord]) -> TrainingData:
    return dataclasses.replace(data, train=data.train[:30] + extra)


def _reasons(data: TrainingData, tokenizer, settings: Settings) -> str:  # type: ignore[no-untyped-def]
    report = validate_training_data(data, tokenizer, DataLimits(pii_patterns=tuple(settings.pii_patterns)))
    assert not report.passed
    return report.summary() + "\n" + "\n".join(f"{f.reason}: {f.examples}" for f in report.failures)


def test_shipped_sample_passes(data: TrainingData, tokenizer, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    report = validate_training_data(data, tokenizer, DataLimits(pii_patterns=tuple(settings.pii_patterns)))
    assert report.passed, report.summary()


def test_each_defect_is_reported_with_the_record_id(data: TrainingData, tokenizer, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    good = data.train[0]
    answer_first = dataclasses.replace(good, id="bad-roles", messages=tuple(reversed(good.messages)))
    empty = dataclasses.replace(good, id="bad-empty", messages=(Message("user", " "), good.messages[1]))
    secret = dataclasses.replace(
        good, id="bad-secret", messages=(Message("user", "my api_key = sk-12345678abcdef"), good.messages[1])
    )
    leaked = dataclasses.replace(data.eval[0], id="bad-leak")
    duplicate = dataclasses.replace(data.train[1], id="bad-dup")
    summary = _reasons(_with_train(data, [answer_first, empty, secret, leaked, duplicate]), tokenizer, settings)
    for reason, record in [
        ("wrong roles", "bad-roles"),
        ("empty turn", "bad-empty"),
        ("PII or a secret", "bad-secret"),
        ("leakage", "bad-leak"),
        ("duplicate record", "bad-dup"),
    ]:
        assert reason in summary and record in summary, (reason, summary)


def test_overlong_records_break_the_token_bound(data: TrainingData, tokenizer, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    long = dataclasses.replace(
        data.train[0], id="bad-long", messages=(Message("user", "word " * 600), data.train[0].messages[1])
    )
    assert "token length" in _reasons(_with_train(data, [long]), tokenizer, settings)
