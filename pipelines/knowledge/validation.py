"""Validation gate for a batch of documents, with Great Expectations (GX Core).

Each expectation that a document breaks sends it to the quarantine report with
the expectation's name and a reason; the rest go on to be indexed. Hard limits
(no documents at all, too large a share invalid) stop the run before Weaviate is
touched. GX runs inside the task (no Airflow provider: its pins break Airflow 3).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.failures import ValidationFailed
from pipelines.knowledge.documents import SUPPORTED_TYPES, Document, LoadProblem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantineRecord:
    """Why one document was kept out of the index."""

    document: str
    expectation: str
    reason: str


@dataclass(frozen=True)
class ValidationLimits:
    """Thresholds for documents and for the batch as a whole."""

    min_text_chars: int = 20
    max_text_chars: int = 2_000_000
    max_invalid_share: float = 0.2
    pii_patterns: tuple[str, ...] = ()


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


def _frame(documents: Sequence[Document]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "doc_id": [d.id for d in documents],
            "title": [d.title for d in documents],
            "text": [d.text for d in documents],
            "file_type": [d.file_type for d in documents],
            "encoding_valid": [d.encoding_valid for d in documents],
        }
    )


def _suite(limits: ValidationLimits) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="documents")
    for expectation in (
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectTableColumnsToMatchSet(column_set=["doc_id", "title", "text", "file_type", "encoding_valid"]),
        gxe.ExpectColumnValuesToNotBeNull(column="doc_id"),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
        gxe.ExpectColumnValuesToBeInSet(column="file_type", value_set=list(SUPPORTED_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="encoding_valid", value_set=[True]),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=limits.min_text_chars, max_value=limits.max_text_chars
        ),
        *(
            [gxe.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=list(limits.pii_patterns))]
            if limits.pii_patterns
            else []
        ),
    ):
        suite.add_expectation(expectation)
    return suite


REASONS = {
    "expect_column_values_to_be_unique": "duplicate id",
    "expect_column_values_to_be_in_set:file_type": "unexpected file type",
    "expect_column_values_to_be_in_set:encoding_valid": "text is not valid UTF-8",
    "expect_column_value_lengths_to_be_between": "text empty, too short or too long",
    "expect_column_values_to_not_match_regex_list": "contains PII or a secret",
    "expect_column_values_to_not_be_null": "missing id",
}


def _reason(kind: str, column: str | None) -> str:
    return REASONS.get(f"{kind}:{column}") or REASONS.get(kind) or kind


def run_expectations(documents: Sequence[Document], limits: ValidationLimits, docs_dir: Path | None) -> Any:
    """Validate the batch with GX; build Data Docs HTML under `docs_dir` when given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root = docs_dir or Path(tempfile.mkdtemp(prefix="gx-"))
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_or_update_pandas("documents")
    asset = source.add_dataframe_asset("batch")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole batch")
    suite = context.suites.add_or_update(_suite(limits))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name="documents", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name="documents",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data docs")],
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": _frame(documents)})
    return next(iter(result.run_results.values())), root / "gx" / "uncommitted" / "data_docs" / "local_site"


def validate_documents(
    documents: Sequence[Document],
    problems: Sequence[LoadProblem],
    limits: ValidationLimits,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the gate. Never raises for bad documents; `enforce` decides about the batch."""
    quarantine = [QuarantineRecord(p.path, "readable", p.reason) for p in problems]
    results: list[dict[str, Any]] = []
    bad_rows: set[int] = set()
    data_docs: Path | None = None
    if documents:
        validation, data_docs = run_expectations(documents, limits, docs_dir)
        for item in validation.results:
            config = item.expectation_config
            column = config.kwargs.get("column")
            rows = (item.result or {}).get("unexpected_index_list") or []
            results.append({"expectation": config.type, "column": column, "success": bool(item.success)})
            for row in rows:
                index = int(row) if not isinstance(row, dict) else int(next(iter(row.values())))
                bad_rows.add(index)
                quarantine.append(QuarantineRecord(documents[index].id, config.type, _reason(config.type, column)))
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
