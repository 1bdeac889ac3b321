"""kill -9 anywhere in a re-indexing run, change the corpus, run once: the index converges exactly (issue 9).

Each case runs `pipelines reindex` in a child process that SIGKILLs itself at a named crash point
(`pipelines.faults`), then changes the corpus (ACLs included) and runs one normal re-index. After
it, Weaviate must hold exactly the manifest's chunks (no orphan, none missing), every object with
its document's ACL, and no collection a killed rebuild left behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import sample_reports, settings_env, write_reports

from pipelines.faults import CRASH_POINTS
from pipelines.knowledge import index as idx
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.manifest import IndexManifest
from pipelines.knowledge.reindex import run_reindex
from pipelines.settings import Settings

N_REPORTS = 6
ROOT = Path(__file__).resolve().parents[2]


def killed_run(settings: Settings, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings, PIPELINES_CRASH_AT=point)
    cli = [sys.executable, "-m", "pipelines.cli", "reindex", *args]
    return subprocess.run(cli, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_converged(settings: Settings) -> None:
    with idx.connect(settings) as client:
        live = idx.alias_target(client, settings.collection_alias)
        assert live is not None
        manifest = IndexManifest.load(settings.manifest_dir, live)
        assert manifest is not None
        objects = {str(o.uuid): o.properties for o in client.collections.use(live).iterator()}
        leftovers = idx.unfinished_versions(client, settings.collection_alias)
        generation = idx.live_generation(client, live)
    assert not leftovers, f"half-built collections left: {leftovers}"
    assert set(objects) == manifest.chunk_ids, (
        f"{len(set(objects) - manifest.chunk_ids)} orphans, {len(manifest.chunk_ids - set(objects))} missing"
    )
    assert generation == manifest.generation and not manifest.pending_moves
    by_chunk = {c.uuid: entry for entry in manifest.documents.values() for c in entry.chunks}
    for uuid, props in objects.items():
        assert tuple(props["acl"]) == by_chunk[uuid].acl, f"{uuid} carries another ACL than its document"
        assert props["gen_to"] == 0 and props["gen_from"] <= manifest.generation


def with_acl(rows: list[dict], acl: list[str]) -> list[dict]:
    return [{**row, "acl": acl} for row in rows]


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if not p.startswith("full_")])
def test_killed_incremental_run_converges_after_one_clean_run(kb: Settings, embedder: Embedder, point: str) -> None:
    # Small pages put the `mid_*` points in the middle of a write; a short settle keeps each run quick.
    settings = kb.model_copy(update={"write_page_size": 5, "delete_page_size": 5, "weaviate_settle_s": 2.5})
    docs = settings.data_dir / "documents"
    rows = sample_reports(N_REPORTS)
    write_reports(docs, with_acl(rows, ["hr"]))
    assert run_reindex(settings, embedder=embedder).accepted
    if point == "before_moves_cleared":  # needs chunks that only move: a paragraph put in front of one report
        moved = with_acl(rows, ["hr"])
        # Long enough (> min_tokens) to be a chunk of its own, so every later chunk only moves.
        opening = "A new opening paragraph on the outlook for the coming quarter. " * 6
        moved[1]["text"] = f"{opening.strip()}\n\n" + moved[1]["text"]
        write_reports(docs, moved)
    else:  # the killed run loosens every document's ACL by mistake (every chunk is rewritten)...
        write_reports(docs, with_acl(rows, ["hr", "everyone"]))
    crashed = killed_run(settings, point, "--allow-mass-change")
    assert crashed.returncode == -9, f"the run was not killed at {point}:\n{crashed.stderr[-3000:]}"
    # ...which is then fixed, and one document is edited, before one normal run.
    fixed = with_acl(rows, ["hr"])
    fixed[0]["text"] += "\n\nA late correction to the figures."
    write_reports(docs, fixed)
    # Allowed: if the killed run got past its commit, the fix rewrites every document again.
    assert run_reindex(settings, embedder=embedder, allow_mass_change=True).accepted
    assert_converged(settings)


@pytest.mark.parametrize("point", ["full_mid_write", "full_after_alias"])
def test_killed_full_rebuild_converges_and_never_becomes_a_rollback_target(
    kb: Settings, embedder: Embedder, point: str
) -> None:
    settings = kb.model_copy(update={"write_page_size": 5, "weaviate_settle_s": 2.5})
    docs = settings.data_dir / "documents"
    write_reports(docs, sample_reports(N_REPORTS))
    assert run_reindex(settings, embedder=embedder).accepted
    crashed = killed_run(settings, point, "--full-rebuild")
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    if point == "full_mid_write":
        with idx.connect(settings) as client:
            assert len(idx.versions(client, settings.collection_alias)) == 2
            assert len(idx.accepted_versions(client, settings.collection_alias)) == 1, "half-built is a target"
    write_reports(docs, sample_reports(N_REPORTS - 1))
    assert run_reindex(settings, embedder=embedder).accepted
    assert_converged(settings)
