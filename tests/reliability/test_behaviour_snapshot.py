"""The staged snapshot: content-addressed, read-only, and refused once its bytes change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.behaviour.snapshot import open_staged, record_diff, stage_training_data, staged_from_tags
from pipelines.failures import IntegrityError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live(tmp_path: Path) -> Path:
    folder = tmp_path / "training"
    shutil.copytree(ROOT / "data" / "training", folder)
    return folder


def test_the_same_bytes_stage_to_the_same_folder_and_a_changed_eval_set_changes_only_the_yardstick(
    live: Path, tmp_path: Path
) -> None:
    first = stage_training_data(live, tmp_path / "snapshots")
    assert stage_training_data(live, tmp_path / "snapshots") == first
    lines = (live / "eval.jsonl").read_text().splitlines(keepends=True)
    (live / "eval.jsonl").write_text("".join(lines[:6]))
    second = stage_training_data(live, tmp_path / "snapshots")
    assert second.folder != first.folder and second.yardstick_sha256 != first.yardstick_sha256
    assert second.files["train.jsonl"] == first.files["train.jsonl"]
    assert (first.folder / "eval.jsonl").read_text() == "".join(lines)  # the first snapshot is untouched


def test_a_staged_file_changed_after_validation_is_refused(live: Path, tmp_path: Path) -> None:
    staged = stage_training_data(live, tmp_path / "snapshots")
    train = staged.folder / "train.jsonl"
    train.chmod(0o644)
    train.write_text(train.read_text().replace("the", "a", 1))
    with pytest.raises(IntegrityError, match="changed since validation"):
        staged_from_tags(staged.tags())
    with pytest.raises(IntegrityError, match="missing"):
        open_staged(tmp_path / "nowhere", staged.files)


def test_record_diff_names_added_removed_and_changed_ids() -> None:
    before = '{"id": "a", "x": 1}\n{"id": "b", "x": 1}\n'
    after = '{"id": "b", "x": 2}\n{"id": "c", "x": 1}\n'
    assert record_diff(before, after) == {"added": ["c"], "removed": ["a"], "changed": ["b"]}
