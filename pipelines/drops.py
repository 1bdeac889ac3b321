"""Data drops: files landing in a drop folder become new documents or training data.

A drop folder (`Settings.documents_drop_dir`, `Settings.training_drop_dir`) is where
people and upstream systems put files. A file there is *complete* when a marker
`<name>.done` sits next to it, or, for writers that cannot write markers, when its
size and mtime have not changed across two looks `drop_settle_s` apart. Only
complete files are ingested: copied into the data location under a hidden name,
renamed into place (so readers never see half a file) and removed from the drop
folder. The Airflow side (`pipelines.drop_sensor`, `dags/ingest_drops.py`) turns
an ingest into an asset event; systems that push instead call the REST API
(`emit_asset_event`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.assets import DOCUMENTS_ASSET, TRAINING_DATA_ASSET
from pipelines.behaviour.dataset import EVAL_FILE, OOD_FILE, TRAIN_FILE
from pipelines.settings import Settings

MARKER_SUFFIX = ".done"
# Names writers use while a file is still in flight (rsync, browsers, editors, our own copies).
IN_FLIGHT_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")
KINDS = ("documents", "training")
# Training data is read from these files only; a drop replaces one.
TRAINING_FILES = (TRAIN_FILE, EVAL_FILE, OOD_FILE)


class DropError(RuntimeError):
    """A drop could not be placed, ingested or announced."""


@dataclass(frozen=True)
class FileState:
    """What one look at a dropped file saw."""

    size: int
    mtime: float


@dataclass(frozen=True)
class DropTarget:
    """Where one kind of drop lands, where it ends up, and which asset announces it."""

    kind: str
    drop_dir: Path
    data_dir: Path
    asset: Mapping[str, str]
    accepted: tuple[str, ...] = ()  # names a drop may have; empty: any


def drop_target(settings: Settings, kind: str) -> DropTarget:
    """The drop folder, data location and asset for `documents` or `training`."""
    if kind == "documents":
        if settings.documents_url:
            raise DropError(f"documents come from {settings.documents_url}: drops need a local documents folder")
        return DropTarget(kind, settings.documents_drop_dir, Path(settings.documents_location), DOCUMENTS_ASSET)
    if kind == "training":
        return DropTarget(kind, settings.training_drop_dir, settings.training_data_dir, TRAINING_DATA_ASSET,
                          TRAINING_FILES)  # fmt: skip
    raise DropError(f"unknown drop kind {kind!r}; expected one of {', '.join(KINDS)}")


def watched_targets(settings: Settings) -> list[DropTarget]:
    """Every drop target that can take drops here (documents only when they are a local folder)."""
    kinds = KINDS if not settings.documents_url else ("training",)
    return [drop_target(settings, kind) for kind in kinds]


def _is_payload(relative: Path) -> bool:
    name = relative.name
    hidden = any(part.startswith(".") for part in relative.parts)
    return not hidden and not name.endswith(MARKER_SUFFIX) and not name.endswith(IN_FLIGHT_SUFFIXES)


def scan(drop_dir: Path) -> tuple[dict[str, FileState], set[str]]:
    """Payload files (relative path -> state) and marker files found under a drop folder."""
    files: dict[str, FileState] = {}
    markers: set[str] = set()
    if not drop_dir.is_dir():
        return files, markers
    for path in drop_dir.rglob("*"):
        relative = path.relative_to(drop_dir)
        try:
            if not path.is_file():
                continue
            if relative.name.endswith(MARKER_SUFFIX):
                markers.add(str(relative)[: -len(MARKER_SUFFIX)])
            elif _is_payload(relative):
                stat = path.stat()
                files[str(relative)] = FileState(stat.st_size, stat.st_mtime)
        except FileNotFoundError:  # moved away between listing and stat
            continue
    return files, markers


def complete_files(
    previous: Mapping[str, FileState],
    current: Mapping[str, FileState],
    markers: set[str],
    now: float,
    settle_s: float,
    accepted: Sequence[str] = (),
) -> dict[str, int]:
    """Files safe to ingest (relative path -> size): marked, or unchanged and quiet for `settle_s`.

    Names outside `accepted` (when given) stay in the drop folder and never fire.
    """
    ready = {}
    for name, state in current.items():
        if accepted and name not in accepted:
            continue
        stable = previous.get(name) == state and now - state.mtime >= settle_s
        if name in markers or stable:
            ready[name] = state.size
    return ready


def _copy_into(source: Path, destination: Path) -> None:
    """Copy under a hidden name, then rename: readers see the old file or the whole new one."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        shutil.copyfile(source, staging)
        with staging.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, destination)
    finally:
        staging.unlink(missing_ok=True)


def ingest(target: DropTarget, expected: Mapping[str, int]) -> list[str]:
    """Move the complete files (relative path -> size seen as complete) into the data location.

    Idempotent: a file already taken (by a retry or a racing ingest) is skipped, and a file
    whose size changed since it was seen complete is left for the next look.
    """
    moved = []
    for name, size in sorted(expected.items()):
        source = target.drop_dir / name
        try:
            if source.stat().st_size != size:
                continue
        except FileNotFoundError:
            continue
        _copy_into(source, target.data_dir / name)
        source.unlink(missing_ok=True)
        (target.drop_dir / f"{name}{MARKER_SUFFIX}").unlink(missing_ok=True)
        moved.append(name)
    return moved


def _files_to_drop(target: DropTarget, paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(source, relative name) for every file given; folders contribute their files."""
    found = []
    for path in paths:
        if path.is_dir():
            found += [(p, str(p.relative_to(path))) for p in sorted(path.rglob("*")) if p.is_file()]
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise DropError(f"{path} does not exist")
    rejected = [name for _, name in found if not _is_payload(Path(name))]
    if rejected:
        raise DropError(f"hidden, in-flight or marker names are never ingested; rename: {', '.join(rejected)}")
    if not found:
        raise DropError("nothing to drop: the folders given hold no files")
    unknown = [name for _, name in found if target.accepted and name not in target.accepted]
    if unknown:
        raise DropError(f"{target.kind} drops replace {', '.join(target.accepted)}; not: {', '.join(unknown)}")
    return found


def place(target: DropTarget, paths: Sequence[Path]) -> list[str]:
    """Put files into the drop folder, each whole before its `.done` marker appears."""
    names = []
    for source, name in _files_to_drop(target, paths):
        _copy_into(source, target.drop_dir / name)
        (target.drop_dir / f"{name}{MARKER_SUFFIX}").touch()
        names.append(name)
    return names


def publish(target: DropTarget, paths: Sequence[Path]) -> list[str]:
    """Put files straight into the data location (atomically, one by one)."""
    names = []
    for source, name in _files_to_drop(target, paths):
        _copy_into(source, target.data_dir / name)
        names.append(name)
    return names


def event_extra(target: DropTarget, files: Sequence[str], source: str) -> dict[str, Any]:
    """What an asset event says about a drop: which files, from where, into where."""
    return {"kind": target.kind, "files": list(files), "data_dir": str(target.data_dir), "source": source}


def emit_asset_event(settings: Settings, asset: Mapping[str, str], extra: Mapping[str, Any]) -> int:
    """Record an asset event through Airflow's REST API; returns the event id.

    This is the call for systems that push: consumers of the asset (DAGs scheduled on
    it) start as if a task had updated it.
    """
    import requests

    from pipelines.airflow_api import AirflowApi, AirflowApiError

    try:
        api = AirflowApi(settings)
        found = api.call("GET", "/assets", params={"name_pattern": asset["name"], "limit": 100})["assets"]
        ids = [a["id"] for a in found if a["name"] == asset["name"]]  # names are unique in Airflow 3
        if not ids:
            raise DropError(f"Airflow at {api.base} knows no asset {asset['name']!r}: is its DAG parsed?")
        event = api.call("POST", "/assets/events", json={"asset_id": ids[0], "extra": dict(extra)})
    except (AirflowApiError, requests.RequestException) as err:
        raise DropError(f"could not emit the {asset['name']} asset event: {err}") from err
    return int(event["id"])
