"""Small glue between Airflow tasks and the pipelines code (Airflow imported lazily)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# Failures that a retry cannot fix: bad data or a failed quality gate.
DETERMINISTIC_FAILURES = ("ValidationFailed", "QualityGateFailed", "TrainingDataInvalid", "PromotionRejected")


@contextmanager
def fail_fast() -> Iterator[None]:
    """Turn deterministic failures into AirflowFailException so the task is not retried."""
    try:
        yield
    except Exception as err:
        if type(err).__name__ in DETERMINISTIC_FAILURES:
            from airflow.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(err).__name__}: {err}") from err
        raise
