"""The Airflow side of the pipelines: everything that knows Airflow exists.

`api` (REST client), `db` (metadata-database connect args, imported by Airflow itself),
`assets` (asset names and URIs), `drop_sensor` (drop trigger and sensor), `run_notes`
(the MLflow link on a run's page) and, here, the failure policy for tasks. `knowledge/`
and `behaviour/` never import this package; Airflow itself is imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fail_fast() -> Iterator[None]:
    """Turn deterministic failures into AirflowFailException so the task is not retried."""
    from pipelines.failures import DeterministicFailure

    try:
        yield
    except DeterministicFailure as err:
        from airflow.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(err).__name__}: {err}") from err
