"""Validation gate for training data, with Great Expectations (GX Core).

Every record of `train.jsonl` and `eval.jsonl` becomes a row of derived columns
(roles, shortest turn, token count, a content key, a leakage flag, ...) and GX
checks them. Any failed expectation fails the whole set: a model trained on a
partly broken set is not worth registering, so training never starts. This module
holds the frame, the suite and the reasons; `pipelines.expectations` runs GX.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.behaviour.dataset import InstructionRecord, TrainingData
from pipelines.behaviour.house_format import ANSWER_PATTERN, abstention_answer, is_abstention, parse_answer, words
from pipelines.expectations import SuiteRun, run_suite

ALLOWED_ROLES = ["user,assistant", "system,user,assistant"]
# A training question or answer whose word 3-grams overlap an eval question's or answer's this much
# (Jaccard) is a near-duplicate: it would teach the test. The shipped sample's closest pair is 0.28;
# one word changed in a 15-word sentence still scores 0.63.
SHINGLE_WORDS = 3
NEAR_DUPLICATE_JACCARD = 0.5


@dataclass(frozen=True)
class DataLimits:
    """Bounds the records must respect."""

    min_tokens: int = 16
    max_tokens: int = 384
    min_train_records: int = 8
    min_eval_records: int = 4
    pii_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    """One broken expectation: what, how many rows, which ones."""

    expectation: str
    column: str
    reason: str
    count: int
    examples: list[str]


@dataclass
class DataReport:
    """Outcome of validating one training set."""

    train_records: int
    eval_records: int
    ood_records: int
    failures: list[Failure] = field(default_factory=list)
    expectations: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.passed:
            counts = f"{self.train_records} train, {self.eval_records} eval, {self.ood_records} OOD records"
            return f"training data valid: {counts}; {self.expectations} expectations met"
        detail = "; ".join(f"{f.reason} ({f.count}: {', '.join(f.examples[:3])})" for f in self.failures)
        return f"training data invalid, {len(self.failures)} of {self.expectations} expectations failed: {detail}"

    def write(self, path: Path) -> Path:
        """Write the report as JSON, for people and for MLflow."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"summary": self.summary(), "passed": self.passed, **asdict(self)}
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False))
        return path


REASONS = {
    "expect_table_row_count_to_be_between": "too few records",
    "expect_column_values_to_be_unique:id": "duplicate record id",
    "expect_column_values_to_be_unique:content_key": "duplicate record (same question and answer)",
    "expect_column_values_to_be_in_set:roles": "wrong roles or turn order (want [system,] user, assistant)",
    "expect_column_values_to_be_between:shortest_turn": "empty turn",
    "expect_column_values_to_be_between:tokens": "token length out of bounds",
    "expect_column_values_to_match_regex:answer": "answer not in the house format",
    "expect_column_values_to_be_in_set:citations_exist": "answer cites a source that is not in the context",
    "expect_column_values_to_not_match_regex_list": "contains PII or a secret",
    "expect_column_values_to_be_in_set:leaks_eval": "training record overlaps an eval record, exactly or nearly "
    "(leakage)",
}


def _normal(text: str) -> str:
    return " ".join(words(text))


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[str]:
    """The word n-grams of a text (the text itself when shorter than n words)."""
    parts = words(text)
    return frozenset(" ".join(parts[i : i + size]) for i in range(max(1, len(parts) - size + 1)))


def near_duplicate(text: str, references: Sequence[frozenset[str]], threshold: float = NEAR_DUPLICATE_JACCARD) -> bool:
    """Whether `text` shares at least `threshold` (Jaccard) of its word n-grams with any reference."""
    mine = shingles(text)
    return any(len(mine & other) / len(mine | other) >= threshold for other in references if mine | other)


@dataclass(frozen=True)
class _EvalIndex:
    keys: set[str]  # normalised eval questions and answers (exact copies)
    shingles: list[frozenset[str]]  # their word n-grams (near copies)

    def overlaps(self, question: str, answer: str) -> bool:
        if {_normal(question), _normal(answer)} & self.keys:
            return True
        return near_duplicate(question, self.shingles) or near_duplicate(answer, self.shingles)


def _row(record: InstructionRecord, split: str, tokenizer: Any, eval_index: _EvalIndex) -> dict[str, Any]:
    from pipelines.behaviour.house_format import chat_messages
    from pipelines.behaviour.training import _ids

    roles = ",".join(m.role for m in record.messages)
    try:
        question, answer = record.question, record.reference
    except StopIteration:  # a record without a user or assistant turn: the roles check reports it
        question, answer = "", ""
    parsed = parse_answer(answer)
    labels = {c.label for c in record.contexts}
    chat = chat_messages(question, record.contexts, answer)
    return {
        "id": record.id,
        "split": split,
        "roles": roles,
        "shortest_turn": min((len(m.content.strip()) for m in record.messages), default=0),
        "tokens": len(_ids(tokenizer.apply_chat_template(chat))),
        "answer": answer,
        # An abstention cites nothing (`Sources: none`); any other answer must cite shown sources only.
        "citations_exist": bool(
            parsed and set(parsed.labels) <= labels and (parsed.labels or is_abstention(parsed.answer))
        ),
        "content_key": f"{_normal(question)} || {_normal(answer)}",
        "text": "\n".join([m.content for m in record.messages] + [c.text for c in record.contexts]),
        "leaks_eval": split == "train" and eval_index.overlaps(question, answer),
    }


def _turns(record: InstructionRecord) -> list[str]:
    try:
        return [record.question, record.reference]
    except StopIteration:  # malformed: the roles check reports it
        return []


def eval_overlap_index(eval_records: Sequence[InstructionRecord]) -> _EvalIndex:
    """What the leakage expectation compares training records with: eval questions and answers, exact and near."""
    # The abstention sentence is the same in every set by design: it is a format, not a leaked answer.
    texts = [t for r in eval_records for t in _turns(r) if t != abstention_answer()]
    return _EvalIndex({_normal(t) for t in texts}, [shingles(t) for t in texts])


def _frame(data: TrainingData, tokenizer: Any) -> Any:
    import pandas as pd

    eval_index = eval_overlap_index(data.eval)
    rows = [_row(r, "train", tokenizer, eval_index) for r in data.train]
    rows += [_row(r, "eval", tokenizer, eval_index) for r in data.eval]
    return pd.DataFrame(rows)


def _suite(limits: DataLimits, train_rows: int) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="training_data")
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=limits.min_train_records + limits.min_eval_records),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="content_key"),
        gxe.ExpectColumnValuesToBeInSet(column="roles", value_set=ALLOWED_ROLES),
        gxe.ExpectColumnValuesToBeBetween(column="shortest_turn", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="tokens", min_value=limits.min_tokens, max_value=limits.max_tokens),
        gxe.ExpectColumnValuesToMatchRegex(column="answer", regex=ANSWER_PATTERN.pattern),
        gxe.ExpectColumnValuesToBeInSet(column="citations_exist", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="leaks_eval", value_set=[False]),
    ]
    if limits.pii_patterns:
        expectations.append(
            gxe.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=list(limits.pii_patterns))
        )
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _failures(run: SuiteRun, frame: Any) -> list[Failure]:
    failures = []
    for outcome in run.failed:
        examples = [str(frame.iloc[i]["id"]) for i in outcome.rows][:10]
        count = outcome.count or (0 if outcome.column else 1)
        failures.append(Failure(outcome.kind, outcome.column or "", outcome.reason(REASONS), count, examples))
    return failures


def validate_training_data(data: TrainingData, tokenizer: Any, limits: DataLimits) -> DataReport:
    """Run the GX suite over train and eval records; the report lists every broken expectation."""
    frame = _frame(data, tokenizer)
    run = run_suite("training_data", lambda: _suite(limits, len(data.train)), frame)
    report = DataReport(len(data.train), len(data.eval), len(data.ood), _failures(run, frame), run.expectations)
    if len(data.train) < limits.min_train_records or len(data.eval) < limits.min_eval_records or not data.ood:
        counts = [f"train={len(data.train)}", f"eval={len(data.eval)}", f"ood={len(data.ood)}"]
        report.failures.append(Failure("record_counts", "split", "too few records in a split", 1, counts))
    return report
