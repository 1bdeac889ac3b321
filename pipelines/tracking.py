"""MLflow tracking helpers shared by both layers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.settings import Settings


def configure(settings: Settings) -> None:
    """Point the MLflow client at the configured tracking server."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def git_revision(repo_dir: Path) -> str:
    """The checked-out commit, with `-dirty` when the tree has local changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir, capture_output=True, text=True
    ).stdout.strip()
    return f"{rev}-dirty" if dirty else rev


@contextmanager
def tracked_run(
    settings: Settings,
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """Start (or resume, given `run_id`) an MLflow run in `experiment`."""
    import mlflow

    configure(settings)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=run_name, tags=dict(tags or {})) as run:
        yield run


def run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI."""
    return f"{settings.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"


def run_link(settings: Settings, run_id: str) -> str:
    """Link to a run in the MLflow UI, looking up its experiment."""
    import mlflow

    configure(settings)
    return run_url(settings, mlflow.get_run(run_id).info.experiment_id, run_id)
