"""Data drops: files landing in a drop folder become new documents or training data.

A drop folder (`Settings.documents_drop_dir`, `Settings.training_drop_dir`) is where
people and upstream systems put files. A file there is *complete* when a marker
`<name>.done` sits next to it, or, for writers that cannot write markers, when its
size and mtime have not changed across two looks `drop_settle_s` apart. Only
complete files are ingested: copied into the data location under a hidden name,
renamed into place (so readers never see half a file) and removed from the drop
folder. The Airflow side (`pipelines.orchestration.drop_sensor`, `dags/ingest_drops.py`) turns
an ingest into an asset event; systems that push instead call the REST API
(`emit_asset_event`).

A drop folder is writable by others, so nothing in it is followed: symbolic links,
hard links to files outside the folder, devices, FIFOs, sockets, names with `..` or
absolute paths, and files over `MAX_DROP_BYTES` are refused. Checks use lstat and
files are opened with O_NOFOLLOW and re-checked on the open descriptor, then copied
from it. A refused file is moved aside into `<drop folder>/.refused/`, logged, and
listed in a JSON report under `state/quarantine/drops/`: never copied, never lost.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.behaviour.dataset import EVAL_FILE, OOD_FILE, TRAIN_FILE
from pipelines.knowledge.documents import SIDECAR_SUFFIX
from pipelines.orchestration.assets import DOCUMENTS_ASSET, TRAINING_DATA_ASSET
from pipelines.settings import Settings

MARKER_SUFFIX = ".done"
# Names writers use while a file is still in flight (rsync, browsers, editors, our own copies).
IN_FLIGHT_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")
KINDS = ("documents", "training")
# Training data is read from these files only; a drop replaces one.
TRAINING_FILES = (TRAIN_FILE, EVAL_FILE, OOD_FILE)
REFUSED_DIR = ".refused"  # hidden, so never scanned again
COPY_BLOCK = 2**20

log = logging.getLogger(__name__)


class DropError(RuntimeError):
    """A drop could not be placed, ingested or announced."""


class DropRefused(DropError):
    """A dropped file that is never followed or copied (a link, a device, a bad name, too large)."""


@dataclass(frozen=True)
class Refusal:
    """One refused drop file, and where it was put aside (empty: left where it was)."""

    name: str
    reason: str
    moved_to: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What one ingest moved into the data location and what it refused."""

    moved: list[str]
    refused: list[Refusal] = field(default_factory=list)
    report: Path | None = None


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
    max_bytes: int = 100 * 2**20
    report_dir: Path | None = None  # refusal reports; None: log only


def drop_target(settings: Settings, kind: str) -> DropTarget:
    """The drop folder, data location and asset for `documents` or `training`."""
    if kind == "documents":
        if settings.documents_url:
            raise DropError(f"documents come from {settings.documents_url}: drops need a local documents folder")
        return DropTarget(
            kind,
            settings.documents_drop_dir,
            Path(settings.documents_location),
            DOCUMENTS_ASSET,
            (),
            settings.max_drop_bytes,
            settings.quarantine_dir / "drops",
        )
    if kind == "training":
        return DropTarget(
            kind,
            settings.training_drop_dir,
            settings.training_data_dir,
            TRAINING_DATA_ASSET,
            TRAINING_FILES,
            settings.max_drop_bytes,
            settings.quarantine_dir / "drops",
        )
    raise DropError(f"unknown drop kind {kind!r}; expected one of {', '.join(KINDS)}")


def watched_targets(settings: Settings) -> list[DropTarget]:
    """Every drop target that can take drops here (documents only when they are a local folder)."""
    kinds = KINDS if not settings.documents_url else ("training",)
    return [drop_target(settings, kind) for kind in kinds]


def _is_payload(relative: Path) -> bool:
    name = relative.name
    hidden = any(part.startswith(".") for part in relative.parts)
    return not hidden and not name.endswith(MARKER_SUFFIX) and not name.endswith(IN_FLIGHT_SUFFIXES)


def _entries(folder: Path, relative: PurePosixPath = PurePosixPath("")) -> Iterator[tuple[str, os.stat_result]]:  # noqa: B008 - immutable
    """(relative name, lstat) of every non-folder entry below `folder`; links are entries, never followed.

    Hidden folders (our `.refused/`, staging) are skipped.
    """
    try:
        with os.scandir(folder) as listing:
            found = list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in found:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # moved away between listing and stat
            continue
        name = relative / entry.name
        if stat.S_ISDIR(info.st_mode):
            if not entry.name.startswith("."):
                yield from _entries(Path(entry.path), name)
        else:
            yield str(name), info


def scan(drop_dir: Path) -> tuple[dict[str, FileState], set[str]]:
    """Payload entries (relative path -> state) and marker files found under a drop folder.

    Links, FIFOs and devices are listed too (by their own lstat), so that a complete one
    reaches `ingest`, which refuses and reports it instead of ignoring it forever.
    """
    files: dict[str, FileState] = {}
    markers: set[str] = set()
    for name, info in _entries(drop_dir):
        relative = Path(name)
        if relative.name.endswith(MARKER_SUFFIX):
            markers.add(name[: -len(MARKER_SUFFIX)])
        elif _is_payload(relative):
            files[name] = FileState(info.st_size, info.st_mtime)
    return files, markers


def unsafe_name(name: str) -> str | None:
    """Why a relative drop name must not be used as a path (None when it is safe)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute():
        return "absolute or empty path"
    if ".." in path.parts or "\\" in name or "\0" in name:
        return "name with `..` or an odd character"
    return None


def _kind_refused(info: os.stat_result) -> str | None:
    mode = info.st_mode
    for test, what in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return f"{what}: never followed"
    return None if stat.S_ISREG(mode) else "not a regular file"


def _links_inside(folder: Path) -> Counter[tuple[int, int]]:
    """How many names each (device, inode) has inside `folder`."""
    return Counter((info.st_dev, info.st_ino) for _, info in _entries(folder))


def _parent_fd(base: Path, parts: Sequence[str]) -> int:
    """An open descriptor of the folder holding `base/parts`, reached without following a link."""
    dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    for part in parts[:-1]:
        try:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            os.close(dir_fd)
            raise
        except OSError:
            os.close(dir_fd)
            raise DropRefused(f"folder {part!r} on its path is a link or not a folder") from None
        os.close(dir_fd)
        dir_fd = next_fd
    return dir_fd


def open_no_follow(base: Path, name: str, max_bytes: int, check_links: bool = True) -> tuple[int, int]:
    """Open `base/name` for reading without following any link; returns (fd, size).

    Every folder on the way is opened with O_NOFOLLOW; the file must be a regular file
    (checked with lstat, then again on the open descriptor, so a swap in between is
    caught), at most `max_bytes`, and with `check_links`, without names outside `base`.
    """
    reason = unsafe_name(name)
    if reason:
        raise DropRefused(reason)
    parts = PurePosixPath(name).parts
    dir_fd = _parent_fd(base, parts)
    try:
        info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        reason = _kind_refused(info)
        if reason:
            raise DropRefused(reason)
        if check_links and info.st_nlink > 1 and info.st_nlink > _links_inside(base)[(info.st_dev, info.st_ino)]:
            raise DropRefused(f"hard link ({info.st_nlink} names) to a file outside the drop folder")
        if info.st_size > max_bytes:
            raise DropRefused(f"{info.st_size} bytes, over MAX_DROP_BYTES ({max_bytes})")
        # O_NONBLOCK: should the name have become a FIFO meanwhile, opening it must not hang.
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as err:  # ELOOP: the last name became a link
        raise DropRefused(f"cannot be opened without following a link ({err.strerror})") from None
    finally:
        os.close(dir_fd)
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        os.close(fd)
        raise DropRefused("changed while being checked")
    return fd, opened.st_size


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
    # A document waits for its sidecar (`x.pdf` for `x.pdf.meta.yaml`, which may carry its ACL): ingested
    # alone, it would be indexed under the folder's or the default ACL until a later run.
    for name in list(ready):
        sidecar = f"{name}{SIDECAR_SUFFIX}"
        if sidecar in current and sidecar not in ready:
            del ready[name]
    return ready


def _copy_into(source_fd: int, destination: Path, max_bytes: int) -> None:
    """Copy an open file under a hidden name, then rename: readers see the old file or the whole new one.

    At most `max_bytes` are read, so a file that keeps growing cannot fill the disk.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with os.fdopen(source_fd, "rb", closefd=True) as source, staging.open("xb") as out:
            copied = 0
            while block := source.read(COPY_BLOCK):
                copied += len(block)
                if copied > max_bytes:
                    raise DropRefused(f"grew over MAX_DROP_BYTES ({max_bytes}) while being copied")
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, destination)
    finally:
        staging.unlink(missing_ok=True)


def _put_aside(target: DropTarget, name: str) -> str:
    """Move a refused entry into `.refused/` by rename (which follows nothing); returns where."""
    if unsafe_name(name):
        return ""
    aside = target.drop_dir / REFUSED_DIR / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}" / name
    parts = PurePosixPath(name).parts
    try:
        # Only an entry reached without following links moves: a forged `link/file` name
        # must not move a file out of the folder the link points to.
        dir_fd = _parent_fd(target.drop_dir, parts)
    except (DropError, OSError):
        return ""
    try:
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(parts[-1], aside, src_dir_fd=dir_fd)
    except OSError:
        return ""
    finally:
        os.close(dir_fd)
    (target.drop_dir / f"{name}{MARKER_SUFFIX}").unlink(missing_ok=True)
    return str(aside)


def report_refusals(target: DropTarget, refused: Sequence[Refusal]) -> Path | None:
    """Log each refusal and write them as JSON under the target's report folder."""
    for refusal in refused:
        log.warning(
            "refused %s drop %r: %s (put aside: %s)",
            target.kind,
            refusal.name,
            refusal.reason,
            refusal.moved_to or "no",
        )
    if not refused or target.report_dir is None:
        return None
    target.report_dir.mkdir(parents=True, exist_ok=True)
    path = target.report_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{target.kind}.json"
    body = {"kind": target.kind, "drop_dir": str(target.drop_dir), "refused": [asdict(r) for r in refused]}
    path.write_text(json.dumps(body, indent=2))
    return path


def ingest_files(target: DropTarget, expected: Mapping[str, int]) -> IngestResult:
    """Move the complete files (relative path -> size seen as complete) into the data location.

    Idempotent: a file already taken (by a retry or a racing ingest) is skipped, and a file
    whose size changed since it was seen complete is left for the next look. Refused
    entries are put aside and reported, never copied.
    """
    moved: list[str] = []
    refused: list[Refusal] = []
    for name, size in sorted(expected.items()):
        try:
            fd, found_size = open_no_follow(target.drop_dir, name, target.max_bytes)
        except FileNotFoundError:
            continue
        except DropRefused as err:
            refused.append(Refusal(name, str(err), _put_aside(target, name)))
            continue
        if found_size != size:
            os.close(fd)
            continue
        try:
            _copy_into(fd, target.data_dir / name, target.max_bytes)
        except DropRefused as err:
            refused.append(Refusal(name, str(err), _put_aside(target, name)))
            continue
        (target.drop_dir / name).unlink(missing_ok=True)
        (target.drop_dir / f"{name}{MARKER_SUFFIX}").unlink(missing_ok=True)
        moved.append(name)
    return IngestResult(moved, refused, report_refusals(target, refused))


def ingest(target: DropTarget, expected: Mapping[str, int]) -> list[str]:
    """`ingest_files`, returning the names moved (refusals are logged and reported)."""
    return ingest_files(target, expected).moved


def _files_to_drop(target: DropTarget, paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(base folder, relative name) for every file given; folders contribute their files.

    Links and special files are refused, named or found in a folder: a drop copies what
    it is given, not what a link points to.
    """
    found: list[tuple[Path, str]] = []
    refused: list[str] = []
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise DropError(f"{path} does not exist") from None
        if stat.S_ISDIR(info.st_mode):
            for name, entry in sorted(_entries(path)):
                reason = _kind_refused(entry)
                (refused.append(f"{path / name} ({reason})") if reason else found.append((path, name)))
        elif reason := _kind_refused(info):
            refused.append(f"{path} ({reason})")
        else:
            found.append((path.parent, path.name))
    if refused:
        raise DropRefused(f"refused, never followed or copied: {', '.join(refused)}")
    rejected = [name for _, name in found if not _is_payload(Path(name))]
    if rejected:
        raise DropError(f"hidden, in-flight or marker names are never ingested; rename: {', '.join(rejected)}")
    if not found:
        raise DropError("nothing to drop: the folders given hold no files")
    # Sidecars first: a document must never arrive (or be marked) before the sidecar that may hold its ACL.
    found.sort(key=lambda item: not item[1].endswith(SIDECAR_SUFFIX))
    unknown = [name for _, name in found if target.accepted and name not in target.accepted]
    if unknown:
        raise DropError(f"{target.kind} drops replace {', '.join(target.accepted)}; not: {', '.join(unknown)}")
    return found


def place(target: DropTarget, paths: Sequence[Path]) -> list[str]:
    """Put files into the drop folder, each whole before its `.done` marker appears."""
    names = []
    for base, name in _files_to_drop(target, paths):
        fd, _ = open_no_follow(base, name, target.max_bytes, check_links=False)
        _copy_into(fd, target.drop_dir / name, target.max_bytes)
        (target.drop_dir / f"{name}{MARKER_SUFFIX}").touch()
        names.append(name)
    return names


def publish(target: DropTarget, paths: Sequence[Path]) -> list[str]:
    """Put files straight into the data location (atomically, one by one)."""
    names = []
    for base, name in _files_to_drop(target, paths):
        fd, _ = open_no_follow(base, name, target.max_bytes, check_links=False)
        _copy_into(fd, target.data_dir / name, target.max_bytes)
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

    from pipelines.orchestration.api import AirflowApi, AirflowApiError

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
