"""Validation gate for a batch of documents, with Great Expectations (GX Core).

Each expectation that a document breaks sends it to the quarantine report with
the expectation's name and a reason; the rest go on to be indexed. Hard limits
(no documents at all, too large a share invalid) stop the run before Weaviate is
touched. This module holds the frame, the suite and the reasons; `pipelines.expectations` runs GX.

The GX frame holds no document text: only ids and derived columns (text length,
number of PII patterns matched, ACL groups and problems). Data Docs and the report
render unexpected values, and they go to MLflow, which has no per-document ACL.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.expectations import ExpectationOutcome, run_suite
from pipelines.failures import ValidationFailed
from pipelines.knowledge.boilerplate import REMOVED_CHARS_KEY
from pipelines.knowledge.documents import DEFAULT_ACL_GROUP_PATTERN, PUBLIC, SUPPORTED_TYPES, Document, LoadProblem
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantineRecord:
    """Why one document was kept out of the index."""

    document: str
    expectation: str
    reason: str
    # The groups the document would have had (a stricter ACL must still take effect); None when
    # the file could not be read, () when it names no group: both mean "nobody".
    acl: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ValidationLimits:
    """Thresholds for documents and for the batch as a whole."""

    min_text_chars: int = 20
    max_text_chars: int = 2_000_000
    max_invalid_share: float = 0.2
    pii_patterns: tuple[str, ...] = ()
    acl_group_pattern: str = DEFAULT_ACL_GROUP_PATTERN


@dataclass
class ValidationReport:
    """Outcome of validating one batch: what passes, what is quarantined, and why."""

    total: int
    valid_ids: list[str]
    quarantine: list[QuarantineRecord]
    expectation_results: list[dict[str, Any]] = field(default_factory=list)
    data_docs_dir: str | None = None
    hard_failure: str | None = None

    @property
    def quarantined_acls(self) -> dict[str, tuple[str, ...] | None]:
        """Quarantined document -> the ACL it would have had (None: unknown); what a planner reads."""
        found: dict[str, tuple[str, ...] | None] = {}
        for q in self.quarantine:
            found[q.document] = q.acl if found.get(q.document, q.acl) == q.acl else None
        return found

    @property
    def invalid_count(self) -> int:
        return len({q.document for q in self.quarantine})

    @property
    def invalid_share(self) -> float:
        return self.invalid_count / self.total if self.total else 1.0

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for q in self.quarantine:
            counts[q.expectation] = counts.get(q.expectation, 0) + 1
        detail = ", ".join(f"{name} ({n})" for name, n in sorted(counts.items()))
        return f"{self.invalid_count} of {self.total} documents failed validation" + (f": {detail}" if detail else "")

    def write(self, path: Path) -> Path:
        """Write the report as JSON (the quarantine report people read)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "summary": self.summary(),
            "hard_failure": self.hard_failure,
            "total": self.total,
            "valid": len(self.valid_ids),
            "quarantine": [asdict(q) for q in self.quarantine],
            "expectations": self.expectation_results,
        }
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False))
        return path


COLUMNS = ["doc_id", "file_type", "encoding_valid", "text_length", "pii_matches", "acl", "acl_problem"]


def _pii_matches(text: str, patterns: Sequence[re.Pattern[str]]) -> int:
    return sum(1 for pattern in patterns if pattern.search(text))


def validation_limits(settings: Settings) -> ValidationLimits:
    """Document thresholds from the project settings (the same ACL pattern the loader checks)."""
    return ValidationLimits(
        settings.min_text_chars,
        settings.max_text_chars,
        settings.max_invalid_share,
        tuple(settings.pii_patterns),
        settings.acl_group_pattern,
    )


def _frame(documents: Sequence[Document], limits: ValidationLimits) -> Any:
    """One row per document, with derived columns only: no title, no text."""
    import pandas as pd

    patterns = [re.compile(p) for p in limits.pii_patterns]
    return pd.DataFrame(
        {
            "doc_id": [d.id for d in documents],
            "file_type": [d.file_type for d in documents],
            "encoding_valid": [d.encoding_valid for d in documents],
            "text_length": [len(d.text) for d in documents],
            "pii_matches": [_pii_matches(d.text, patterns) for d in documents],
            # A document with an ACL problem is reported by `acl_problem` alone (GX skips nulls).
            "acl": [None if d.acl_problem else ",".join(d.acl) for d in documents],
            "acl_problem": [d.acl_problem for d in documents],
        }
    )


def acl_list_regex(group_pattern: str) -> str:
    """A regex for comma-joined groups, each `public` or matching `group_pattern`."""
    group = re.sub(r"^(\^|\\A)|(\$|\\Z)$", "", group_pattern)
    one = f"(?:{PUBLIC}|(?:{group}))"
    return f"^{one}(?:,{one})*$"


def _suite(limits: ValidationLimits) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="documents")
    for expectation in (
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectTableColumnsToMatchSet(column_set=COLUMNS),
        gxe.ExpectColumnValuesToNotBeNull(column="doc_id"),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
        gxe.ExpectColumnValuesToBeInSet(column="file_type", value_set=list(SUPPORTED_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="encoding_valid", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(
            column="text_length", min_value=limits.min_text_chars, max_value=limits.max_text_chars
        ),
        gxe.ExpectColumnValuesToBeBetween(column="pii_matches", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeInSet(column="acl_problem", value_set=[""]),
        gxe.ExpectColumnValuesToMatchRegex(column="acl", regex=acl_list_regex(limits.acl_group_pattern)),
    ):
        suite.add_expectation(expectation)
    return suite


REASONS = {
    "expect_column_values_to_be_unique": "duplicate id",
    "expect_column_values_to_be_in_set:file_type": "unexpected file type",
    "expect_column_values_to_be_in_set:encoding_valid": "text is not valid UTF-8",
    "expect_column_values_to_be_between:text_length": "text empty, too short or too long",
    "expect_column_values_to_be_between:pii_matches": "contains PII or a secret",
    "expect_column_values_to_match_regex:acl": "ACL group name does not match ACL_GROUP_PATTERN",
    "expect_column_values_to_not_be_null": "missing id",
}


def _reason(outcome: ExpectationOutcome, document: Document) -> str:
    if outcome.column == "acl_problem":
        return f"ACL: {document.acl_problem}"
    removed = document.metadata.get(REMOVED_CHARS_KEY)
    if outcome.column == "text_length" and removed:  # say so when the cleaning, not the source, emptied it
        return f"text empty, too short or too long after boilerplate removal cut {removed} characters"
    return outcome.reason(REASONS)


def validate_documents(
    documents: Sequence[Document],
    problems: Sequence[LoadProblem],
    limits: ValidationLimits,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the gate. Never raises for bad documents; `enforce` decides about the batch."""
    quarantine = [QuarantineRecord(p.path, "readable", p.reason, None) for p in problems]
    results: list[dict[str, Any]] = []
    bad_rows: set[int] = set()
    data_docs: Path | None = None
    if documents:
        run = run_suite("documents", lambda: _suite(limits), _frame(documents, limits), docs_dir)
        data_docs = run.data_docs_dir
        for outcome in run.outcomes:
            results.append({"expectation": outcome.kind, "column": outcome.column, "success": outcome.success})
            for index in outcome.rows:
                bad_rows.add(index)
                document = documents[index]
                reason = _reason(outcome, document)
                quarantine.append(QuarantineRecord(document.id, outcome.kind, reason, document.acl))
    valid = [d.id for i, d in enumerate(documents) if i not in bad_rows]
    report = ValidationReport(len(documents) + len(problems), valid, quarantine, results, str(data_docs or ""))
    if not valid:
        report.hard_failure = "no valid documents in the batch"
    elif report.invalid_share > limits.max_invalid_share:
        report.hard_failure = (
            f"{report.invalid_share:.0%} of documents are invalid (limit {limits.max_invalid_share:.0%})"
        )
    log.info("validation: %s", report.summary())
    return report


def enforce(report: ValidationReport, report_path: Path) -> None:
    """Raise `ValidationFailed` with an actionable message if the batch must stop."""
    if report.hard_failure:
        raise ValidationFailed(f"{report.hard_failure}; {report.summary()}; see quarantine report at {report_path}")
