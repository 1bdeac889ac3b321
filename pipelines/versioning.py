"""Data versioning with DVC: snapshot a data folder, push it, report its hash."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.tracking import git_revision


class VersioningError(RuntimeError):
    """DVC could not record or push a snapshot."""


@dataclass(frozen=True)
class DataVersion:
    """The exact data a run used: DVC's directory hash plus the git commit."""

    dvc_hash: str
    git_revision: str
    tracking_file: str


def _dvc(repo_dir: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {repo_dir}:\n{result.stderr.strip()}")
    return result.stdout


def tracked_hash(tracking_file: Path) -> str:
    """The directory hash recorded in a `.dvc` file."""
    outs = yaml.safe_load(tracking_file.read_text())["outs"]
    return str(outs[0]["md5"])


def snapshot(data_dir: Path, push: bool = True, remote: str | None = None) -> DataVersion:
    """`dvc add` the folder (rewriting `<folder>.dvc`) and push it to the remote.

    The DVC project is the folder's parent; an unchanged folder keeps its hash.
    """
    repo_dir = data_dir.parent
    _dvc(repo_dir, "add", "--quiet", data_dir.name)
    if push:
        _dvc(repo_dir, "push", "--quiet", *(["--remote", remote] if remote else []))
    tracking_file = repo_dir / f"{data_dir.name}.dvc"
    return DataVersion(tracked_hash(tracking_file), git_revision(repo_dir), str(tracking_file))


def pull(repo_dir: Path, remote: str | None = None) -> None:
    """Fetch tracked data from the remote into the work tree."""
    _dvc(repo_dir, "pull", "--quiet", *(["--remote", remote] if remote else []))
