"""Great Expectations plumbing shared by both validation gates (documents, training data).

Each gate builds its own frame of derived columns, its own suite and its own reason texts;
this module runs a suite over a frame and reads back which rows each expectation rejected.
GX runs in process (no Airflow provider: its pins break Airflow 3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result: which kind on which column, and the frame rows it rejected."""

    kind: str  # e.g. "expect_column_values_to_be_unique"
    column: str | None  # None for table-level expectations
    success: bool
    rows: tuple[int, ...]  # positions in the frame
    count: int  # rows GX counted as unexpected (table-level failures: 0)

    def reason(self, reasons: Mapping[str, str]) -> str:
        """The gate's text for this outcome: keyed `kind:column`, else `kind`, else the kind itself."""
        return reasons.get(f"{self.kind}:{self.column}") or reasons.get(self.kind) or self.kind


@dataclass(frozen=True)
class SuiteRun:
    """Every expectation's outcome, and where the Data Docs went (None: not built)."""

    outcomes: tuple[ExpectationOutcome, ...]
    data_docs_dir: Path | None = None

    @property
    def expectations(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def _row_position(row: Any) -> int:
    # Pandas reports the frame's index value; GX wraps it in a dict when index columns are named.
    return int(next(iter(row.values()))) if isinstance(row, dict) else int(row)


def _outcome(item: Any) -> ExpectationOutcome:
    config, result = item.expectation_config, item.result or {}
    rows = tuple(_row_position(r) for r in result.get("unexpected_index_list") or [])
    count = int(result.get("unexpected_count") or 0)
    return ExpectationOutcome(config.type, config.kwargs.get("column"), bool(item.success), rows, count)


def run_suite(name: str, build_suite: Callable[[], Any], frame: Any, docs_dir: Path | None = None) -> SuiteRun:
    """Validate `frame` (pandas, default RangeIndex) against the suite `build_suite` makes; Data Docs under `docs_dir`.

    The suite is built once the GX context exists (GX refuses to make one before).
    With `docs_dir` the GX project is written there (file mode, a checkpoint that renders Data
    Docs); without it, GX stays in memory: nothing is written and the run is faster.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context: Any = (
        gx.get_context(mode="ephemeral")
        if docs_dir is None
        else gx.get_context(mode="file", project_root_dir=str(docs_dir))
    )
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_or_update_pandas(name).add_dataframe_asset("frame")
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(
            name=name,
            data=batch.add_batch_definition_whole_dataframe("whole frame"),
            suite=context.suites.add_or_update(build_suite()),
        )
    )
    result_format = {"result_format": "COMPLETE"}
    if docs_dir is None:
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        return SuiteRun(tuple(_outcome(item) for item in result.results))
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data docs")],
            result_format=result_format,
        )
    )
    run = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))
    docs = docs_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    return SuiteRun(tuple(_outcome(item) for item in run.results), docs)
