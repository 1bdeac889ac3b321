"""Drop folders: what counts as a complete drop, and how it moves into the data location."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pipelines import drops
from pipelines.drops import DropTarget, FileState


@pytest.fixture
def target(tmp_path: Path) -> DropTarget:
    return DropTarget("documents", tmp_path / "drop", tmp_path / "data", {"name": "documents", "uri": "x://d"})


def test_marked_file_is_complete_at_once() -> None:
    current = {"a.jsonl": FileState(10, 1000.0)}
    assert drops.complete_files({}, current, {"a.jsonl"}, now=1000.0, settle_s=30) == {"a.jsonl": 10}


def test_unmarked_file_is_complete_only_when_unchanged_and_quiet() -> None:
    seen = FileState(10, 1000.0)
    assert drops.complete_files({}, {"a": seen}, set(), now=2000.0, settle_s=30) == {}  # one look only
    assert drops.complete_files({"a": seen}, {"a": seen}, set(), now=1010.0, settle_s=30) == {}  # too recent
    grown = FileState(20, 1000.0)
    assert drops.complete_files({"a": seen}, {"a": grown}, set(), now=2000.0, settle_s=30) == {}  # still growing
    assert drops.complete_files({"a": seen}, {"a": seen}, set(), now=1031.0, settle_s=30) == {"a": 10}


def test_scan_ignores_hidden_in_flight_and_marker_names(target: DropTarget) -> None:
    target.drop_dir.mkdir(parents=True)
    for name in ("a.jsonl", "a.jsonl.done", ".b.jsonl.x1", "c.jsonl.part", "d.tmp", "e.md~"):
        (target.drop_dir / name).write_text("x")
    (target.drop_dir / "sub").mkdir()
    (target.drop_dir / "sub" / "f.md").write_text("# f")
    files, markers = drops.scan(target.drop_dir)
    assert set(files) == {"a.jsonl", "sub/f.md"}
    assert markers == {"a.jsonl"}


def test_ingest_moves_complete_files_and_is_idempotent(target: DropTarget) -> None:
    target.drop_dir.mkdir(parents=True)
    (target.drop_dir / "a.jsonl").write_text("complete")
    (target.drop_dir / "a.jsonl.done").touch()
    expected = {"a.jsonl": len("complete")}
    assert drops.ingest(target, expected) == ["a.jsonl"]
    assert (target.data_dir / "a.jsonl").read_text() == "complete"
    assert not any(target.drop_dir.iterdir()), "file and marker leave the drop folder"
    assert drops.ingest(target, expected) == []  # a retry finds nothing left to do
    assert [p.name for p in target.data_dir.iterdir()] == ["a.jsonl"], "no staging leftovers"


def test_ingest_leaves_a_file_that_changed_since_it_was_seen_complete(target: DropTarget) -> None:
    target.drop_dir.mkdir(parents=True)
    (target.drop_dir / "a.jsonl").write_text("longer than before")
    assert drops.ingest(target, {"a.jsonl": 5}) == []
    assert (target.drop_dir / "a.jsonl").exists() and not target.data_dir.exists()


def test_place_writes_the_marker_after_the_whole_file(target: DropTarget, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jsonl").write_text("one")
    (source / "nested").mkdir()
    (source / "nested" / "b.md").write_text("two")
    assert drops.place(target, [source]) == ["a.jsonl", "nested/b.md"]
    files, markers = drops.scan(target.drop_dir)
    assert set(files) == markers == {"a.jsonl", "nested/b.md"}


def test_dropping_a_hidden_or_missing_file_is_refused(target: DropTarget, tmp_path: Path) -> None:
    (tmp_path / "a.part").write_text("x")
    with pytest.raises(drops.DropError, match="rename: a.part"):
        drops.publish(target, [tmp_path / "a.part"])
    with pytest.raises(drops.DropError, match="does not exist"):
        drops.publish(target, [tmp_path / "missing.jsonl"])


def test_trigger_waits_while_a_file_is_written_and_fires_once_it_settles(tmp_path: Path) -> None:
    from pipelines.orchestration.drop_sensor import DropTrigger

    drop_dir = tmp_path / "drop"
    drop_dir.mkdir()
    growing = drop_dir / "slow.jsonl"
    trigger = DropTrigger({"documents": str(drop_dir)}, settle_s=1.0, poll_s=0.1, idle_after_s=30)

    async def write_slowly_then_wait() -> tuple[dict, float]:
        async def writer() -> float:
            last_write = time.monotonic()
            for _ in range(10):  # 1.5 s of appends, each well inside settle_s
                with growing.open("a") as out:
                    out.write("x" * 100)
                last_write = time.monotonic()
                await asyncio.sleep(0.15)
            return last_write

        write_task = asyncio.create_task(writer())
        event = await anext(trigger.run())
        return event.payload, await write_task

    payload, last_write = asyncio.run(write_slowly_then_wait())
    assert payload == {"status": "dropped", "found": {"documents": {"slow.jsonl": 1000}}}
    assert time.monotonic() - last_write >= 0.95, "fired before the file had settled"


def test_trigger_gives_up_quietly_when_nothing_is_dropped(tmp_path: Path) -> None:
    from pipelines.orchestration.drop_sensor import DropTrigger

    trigger = DropTrigger({"training": str(tmp_path / "absent")}, settle_s=1.0, poll_s=0.05, idle_after_s=0.2)
    payload = asyncio.run(anext(trigger.run())).payload
    assert payload == {"status": "idle", "found": {"training": {}}}


def test_trigger_round_trips_through_its_serialized_form(tmp_path: Path) -> None:
    import importlib

    from pipelines.orchestration.drop_sensor import DropTrigger

    classpath, kwargs = DropTrigger({"documents": str(tmp_path)}, 30, 5, 60).serialize()
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (classpath, kwargs)


def test_stale_unmarked_file_is_complete_on_the_second_look(target: DropTarget) -> None:
    target.drop_dir.mkdir(parents=True)
    old = target.drop_dir / "old.jsonl"
    old.write_text("written a while ago")
    os.utime(old, (time.time() - 120, time.time() - 120))
    first, _ = drops.scan(target.drop_dir)
    second, markers = drops.scan(target.drop_dir)
    assert drops.complete_files({}, first, markers, time.time(), 30) == {}
    assert drops.complete_files(first, second, markers, time.time(), 30) == {"old.jsonl": len("written a while ago")}


def test_training_drops_only_replace_the_files_the_trainer_reads(tmp_path: Path) -> None:
    from pipelines.settings import Settings

    target = drops.drop_target(Settings(state_dir=tmp_path / "s", data_dir=tmp_path / "d"), "training")
    (tmp_path / "notes.jsonl").write_text("{}")
    with pytest.raises(drops.DropError, match="training drops replace train.jsonl, eval.jsonl, ood.jsonl"):
        drops.place(target, [tmp_path / "notes.jsonl"])
    current = {"notes.jsonl": FileState(2, 0.0), "eval.jsonl": FileState(3, 0.0)}
    ready = drops.complete_files({}, current, {"notes.jsonl", "eval.jsonl"}, 1.0, 30, target.accepted)
    assert ready == {"eval.jsonl": 3}


def test_a_document_waits_for_its_sidecar_which_may_hold_its_acl() -> None:
    doc, sidecar = "reviews/x.pdf", "reviews/x.pdf.meta.yaml"
    state = FileState(10, 1000.0)
    # The PDF is marked; its sidecar is still being written (no marker, not quiet yet): neither goes.
    assert drops.complete_files({}, {doc: state, sidecar: state}, {doc}, now=1000.0, settle_s=30) == {}
    both = drops.complete_files({}, {doc: state, sidecar: state}, {doc, sidecar}, now=1000.0, settle_s=30)
    assert both == {doc: 10, sidecar: 10}
    assert drops.complete_files({}, {doc: state}, {doc}, now=1000.0, settle_s=30) == {doc: 10}  # none to wait for
    # A sidecar alone may go first (it can only tighten what an earlier copy of its document had).
    assert drops.complete_files({}, {doc: state, sidecar: state}, {sidecar}, now=1000.0, settle_s=30) == {sidecar: 10}


def test_place_puts_sidecars_in_before_their_documents(target: DropTarget, tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    for name in ("a.md", "a.md.meta.yaml", "b.txt", "b.txt.meta.yaml"):
        (source / name).write_text("acl: [hr]\n" if name.endswith(".meta.yaml") else "# Body\n\nText.")
    placed = drops.place(target, [source])
    assert placed[:2] == ["a.md.meta.yaml", "b.txt.meta.yaml"] and sorted(placed[2:]) == ["a.md", "b.txt"]
