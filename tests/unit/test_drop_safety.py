"""Drop folders refuse what they should not follow: links, special files, odd names, oversized files."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from pipelines import drops
from pipelines.drops import DropTarget


@pytest.fixture
def target(tmp_path: Path) -> DropTarget:
    (tmp_path / "drop").mkdir()
    return DropTarget(
        "documents",
        tmp_path / "drop",
        tmp_path / "data",
        {"name": "documents", "uri": "x://d"},
        max_bytes=1000,
        report_dir=tmp_path / "quarantine" / "drops",
    )


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secrets.env"
    path.parent.mkdir()
    path.write_text("WEAVIATE_API_KEY=abcdefghijklmnopqrstuvwxyz012345\n")
    return path


def _ingest_all(target: DropTarget) -> drops.IngestResult:
    files, _ = drops.scan(target.drop_dir)
    return drops.ingest_files(target, {name: state.size for name, state in files.items()})


def _data_files(target: DropTarget) -> list[str]:
    return (
        sorted(str(p.relative_to(target.data_dir)) for p in target.data_dir.rglob("*"))
        if target.data_dir.exists()
        else []
    )


def _report(result: drops.IngestResult) -> dict[str, str]:
    assert result.report is not None, "a refusal must leave a report"
    return {r["name"]: r["reason"] for r in json.loads(result.report.read_text())["refused"]}


def test_symlink_to_a_secret_is_refused_reported_and_put_aside(target: DropTarget, secret: Path) -> None:
    (target.drop_dir / "notes.txt").symlink_to(secret)
    (target.drop_dir / "good.txt").write_text("a real report")
    result = _ingest_all(target)
    assert result.moved == ["good.txt"]
    assert _data_files(target) == ["good.txt"]
    assert "symbolic link" in _report(result)["notes.txt"]
    aside = Path(result.refused[0].moved_to)
    assert aside.is_symlink() and ".refused" in aside.parts  # kept for a person to look at, not followed
    assert not (target.drop_dir / "notes.txt").is_symlink()
    assert drops.scan(target.drop_dir)[0] == {}  # refused once, not again on every look


def test_symlinked_folder_is_not_descended_into(target: DropTarget, secret: Path) -> None:
    (target.drop_dir / "sub").symlink_to(secret.parent)
    files, _ = drops.scan(target.drop_dir)
    assert set(files) == {"sub"}  # the link itself, never the files behind it
    through = drops.ingest_files(target, {"sub/secrets.env": secret.stat().st_size})  # a forged name
    assert through.moved == [] and "is a link" in _report(through)["sub/secrets.env"]
    assert through.refused[0].moved_to == ""  # nothing reached through the link moves
    link = drops.ingest_files(target, {"sub": 0})
    assert link.moved == [] and "symbolic link" in _report(link)["sub"]
    assert _data_files(target) == [] and secret.exists()


def test_hard_link_to_a_file_outside_is_refused(target: DropTarget, secret: Path) -> None:
    os.link(secret, target.drop_dir / "copy.txt")
    result = _ingest_all(target)
    assert result.moved == [] and _data_files(target) == []
    assert "hard link" in _report(result)["copy.txt"]


def test_hard_links_within_the_drop_folder_are_accepted(target: DropTarget) -> None:
    (target.drop_dir / "a.txt").write_text("same bytes twice")
    os.link(target.drop_dir / "a.txt", target.drop_dir / "b.txt")
    result = _ingest_all(target)
    assert result.moved == ["a.txt", "b.txt"] and not result.refused


def test_fifo_and_socket_are_refused_without_blocking(target: DropTarget) -> None:
    os.mkfifo(target.drop_dir / "pipe.txt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(target.drop_dir / "sock.txt"))
    try:
        result = _ingest_all(target)
    finally:
        server.close()
    reasons = _report(result)
    assert "FIFO" in reasons["pipe.txt"] and "socket" in reasons["sock.txt"]
    assert result.moved == [] and _data_files(target) == []


def test_names_with_dotdot_or_absolute_paths_are_refused(target: DropTarget, secret: Path) -> None:
    result = drops.ingest_files(target, {"../outside/secrets.env": 10, str(secret): 10})
    assert result.moved == [] and _data_files(target) == []
    assert set(_report(result)) == {"../outside/secrets.env", str(secret)}
    assert secret.exists()


def test_files_over_the_size_cap_are_refused(target: DropTarget) -> None:
    (target.drop_dir / "big.txt").write_bytes(b"x" * 1001)
    (target.drop_dir / "ok.txt").write_bytes(b"x" * 1000)
    result = _ingest_all(target)
    assert result.moved == ["ok.txt"]
    assert "MAX_DROP_BYTES" in _report(result)["big.txt"]


def test_cli_drop_refuses_links_it_is_given(target: DropTarget, secret: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "link.txt").symlink_to(secret)
    with pytest.raises(drops.DropRefused, match="symbolic link"):
        drops.publish(target, [folder])
    with pytest.raises(drops.DropRefused, match="symbolic link"):
        drops.place(target, [folder / "link.txt"])
    assert _data_files(target) == [] and not (target.drop_dir / "link.txt").exists()
