"""Validate once, use that: a content-addressed copy of the training data a run validated.

`validate` reads each of `train.jsonl`, `eval.jsonl` and `ood.jsonl` once, stages
those exact bytes under `state/training-snapshots/<sha256>/` and validates the
staged copy; `version`, `train` and `evaluate` read only that folder, re-checking
every file's sha256 first. A drop that lands in `data/training/` during a run is
therefore seen by the next run only.

The eval and OOD files are the *yardstick*: their combined hash is kept apart from
the training file's, so a run can tell whether it is graded on the same test as
the champion was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.behaviour.dataset import EVAL_FILE, OOD_FILE, TRAIN_FILE
from pipelines.failures import IntegrityError

FILES = (TRAIN_FILE, EVAL_FILE, OOD_FILE)
YARDSTICK_FILES = (EVAL_FILE, OOD_FILE)
MANIFEST = "manifest.json"
SNAPSHOT_FOLDER = "training-snapshots"  # under the state folder


@dataclass(frozen=True)
class StagedData:
    """A staged snapshot: its folder and the sha256 of each file in it."""

    folder: Path
    files: Mapping[str, str]  # file name -> sha256 of its bytes

    @property
    def snapshot_sha256(self) -> str:
        """Identity of the whole snapshot (the folder's name)."""
        return _combined(self.files, FILES)

    @property
    def yardstick_sha256(self) -> str:
        """Identity of the eval + OOD sets only: what a model is graded on."""
        return _combined(self.files, YARDSTICK_FILES)

    def tags(self) -> dict[str, str]:
        """MLflow tags naming exactly these bytes (on the run and on the registered version)."""
        return {
            "data.snapshot_sha256": self.snapshot_sha256,
            "data.snapshot_dir": str(self.folder),
            "data.train_sha256": self.files[TRAIN_FILE],
            "data.eval_sha256": self.files[EVAL_FILE],
            "data.ood_sha256": self.files[OOD_FILE],
            "data.yardstick_sha256": self.yardstick_sha256,
        }


def _combined(files: Mapping[str, str], names: tuple[str, ...]) -> str:
    return hashlib.sha256("".join(f"{name}:{files[name]}\n" for name in names).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_training_data(source: Path, root: Path) -> StagedData:
    """Copy the three training files from `source` into `root/<sha256>/`, reading each exactly once."""
    blobs = {name: (source / name).read_bytes() for name in FILES}
    files = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    folder = root / _combined(files, FILES)
    if folder.exists():  # content-addressed: an earlier run staged the same bytes; make sure they still are
        return open_staged(folder, files)
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    for name, blob in blobs.items():
        (partial / name).write_bytes(blob)
    (partial / MANIFEST).write_text(json.dumps(files, indent=1, sort_keys=True))
    for path in partial.iterdir():
        path.chmod(0o444)  # read-only: nothing in the pipeline writes here after staging
    try:
        os.rename(partial, folder)  # atomic: a folder with this name is always complete
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not folder.exists():
            raise
    return open_staged(folder, files)


def open_staged(folder: Path, expected: Mapping[str, str]) -> StagedData:
    """The staged snapshot at `folder`, after checking each file against `expected`; raises IntegrityError."""
    missing = [name for name in FILES if name not in expected]
    if missing:
        raise IntegrityError(f"no recorded sha256 for {missing} of the staged data at {folder}")
    found = {}
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"staged training data {path} is missing")
        found[name] = file_sha256(path)
    changed = [name for name in FILES if found[name] != expected[name]]
    if changed:
        raise IntegrityError(
            f"staged training data in {folder} changed since validation: {changed} "
            f"(recorded {[expected[n][:12] for n in changed]}, now {[found[n][:12] for n in changed]})"
        )
    return StagedData(folder, found)


def staged_from_tags(tags: Mapping[str, str]) -> StagedData:
    """Re-open the snapshot an MLflow run's tags name (written by `StagedData.tags`)."""
    if "data.snapshot_dir" not in tags:
        raise IntegrityError("the run names no staged training data (tag data.snapshot_dir); was it validated?")
    expected = {
        TRAIN_FILE: tags.get("data.train_sha256", ""),
        EVAL_FILE: tags.get("data.eval_sha256", ""),
        OOD_FILE: tags.get("data.ood_sha256", ""),
    }
    return open_staged(Path(tags["data.snapshot_dir"]), expected)


def record_diff(before: str, after: str) -> dict[str, list[str]]:
    """Record ids added, removed and changed between two JSONL texts (rows keyed by their `id`)."""
    old, new = _by_id(before), _by_id(after)
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    }


def _by_id(text: str) -> dict[str, str]:
    rows = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            rows[str(row.get("id", f"line {number}"))] = json.dumps(row, sort_keys=True)
    return rows
