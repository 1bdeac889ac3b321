"""Data versioning with DVC: snapshot a data folder, push it, report its hash."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.tracking import git_revision

log = logging.getLogger(__name__)


class VersioningError(RuntimeError):
    """DVC could not record or push a snapshot."""


@dataclass(frozen=True)
class DataVersion:
    """The exact data a run used: DVC's directory hash plus the git commit."""

    dvc_hash: str
    git_revision: str
    tracking_file: str

    def tags(self) -> dict[str, str]:
        """The MLflow tags of a versioned run; the same names in both layers."""
        return {"data.dvc_hash": self.dvc_hash, "git_revision": self.git_revision}


def _dvc(repo_dir: Path, *args: str) -> str:
    # Self-hosted: DVC would otherwise phone home with usage analytics on every command.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo_dir, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {repo_dir}:\n{result.stderr.strip()}")
    return result.stdout


def clear_stale_locks(repo_dir: Path) -> list[str]:
    """Remove what a killed DVC process left in `.dvc/tmp` so the next `dvc add` is not blocked.

    DVC's `rwlock` lists the PIDs holding each path; an entry of a process that no longer runs,
    or a file torn mid-write, blocks every later command. The single-writer pool guarantees no
    live DVC process of ours is affected. Returns what was removed, for the log.
    """
    import json

    import psutil

    removed: list[str] = []
    rwlock = repo_dir / ".dvc" / "tmp" / "rwlock"
    if not rwlock.exists():
        return removed
    try:
        locks = json.loads(rwlock.read_text() or "{}")
        for mode in ("read", "write"):
            for path, holders in list(locks.get(mode, {}).items()):
                entries = holders if isinstance(holders, list) else [holders]
                alive = [h for h in entries if psutil.pid_exists(int(h["pid"]))]
                if len(alive) != len(entries):
                    removed.append(f"{mode} lock on {path}")
                if not alive:
                    del locks[mode][path]
                else:
                    locks[mode][path] = alive if isinstance(holders, list) else alive[0]
        if removed:
            rwlock.write_text(json.dumps(locks))
    except (ValueError, KeyError, TypeError, AttributeError):
        import time

        # DVC rewrites the file in place: a live process may be mid-write. Only a torn file nobody
        # touched for a minute is a dead process's leftover.
        if time.time() - rwlock.stat().st_mtime > 60:
            rwlock.unlink()
            removed.append("torn rwlock file")
    return removed


def tracked_hash(tracking_file: Path) -> str:
    """The directory hash recorded in a `.dvc` file."""
    outs = yaml.safe_load(tracking_file.read_text())["outs"]
    return str(outs[0]["md5"])


def snapshot(
    repo_dir: Path, out: str, source: Path | None = None, push: bool = True, remote: str | None = None
) -> DataVersion:
    """Record folder `out` of the DVC project `repo_dir` (`<out>.dvc`) and push it to the remote.

    In place by default: `dvc add out`, then `dvc push`; an unchanged folder keeps its hash. With
    `source` (data staged outside the project, as the behaviour layer's validated snapshot), DVC
    records a copy of it as `out`, uploading straight to the remote: the live data folder is untouched.
    """
    stale = clear_stale_locks(repo_dir)
    if stale:
        log.warning("removed stale DVC locks of dead processes: %s", ", ".join(stale))
    remote_args = ["--remote", remote] if remote else []
    if source is None:
        _dvc(repo_dir, "add", "--quiet", out)
        if push:
            _dvc(repo_dir, "push", "--quiet", *remote_args)
    else:
        _dvc(repo_dir, "add", "--quiet", "--to-remote", *remote_args, "-o", out, str(source))
    tracking_file = repo_dir / f"{out}.dvc"
    return DataVersion(tracked_hash(tracking_file), git_revision(repo_dir), str(tracking_file))


def pull(repo_dir: Path, remote: str | None = None) -> None:
    """Fetch tracked data from the remote into the work tree."""
    _dvc(repo_dir, "pull", "--quiet", *(["--remote", remote] if remote else []))
