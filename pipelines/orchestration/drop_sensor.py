"""Airflow side of data drops: a trigger that watches drop folders, and the sensor that defers to it.

Imported by `dags/ingest_drops.py` and, by class path, by the triggerer; `pipelines.drops`
holds the logic and needs no Airflow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from pipelines.drops import FileState, complete_files, scan

# Event payload: kind -> {relative path: size seen complete}.
Found = dict[str, dict[str, int]]


class DropTrigger(BaseTrigger):
    """Fires once some drop folder holds complete files, or with nothing after `idle_after_s`.

    Polls in the triggerer's event loop (directory scans run in a thread); the previous
    look is kept in memory, so an unmarked file needs two looks `settle_s` apart.
    """

    def __init__(
        self,
        drop_dirs: Mapping[str, str],
        settle_s: float,
        poll_s: float,
        idle_after_s: float,
        accepted: Mapping[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.drop_dirs = dict(drop_dirs)
        self.accepted = dict(accepted or {})
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.idle_after_s = idle_after_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "drop_dirs": self.drop_dirs,
                "settle_s": self.settle_s,
                "poll_s": self.poll_s,
                "idle_after_s": self.idle_after_s,
                "accepted": self.accepted,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        previous: dict[str, dict[str, FileState]] = {kind: {} for kind in self.drop_dirs}
        started = time.monotonic()
        while True:
            found: Found = {}
            for kind, directory in self.drop_dirs.items():
                files, markers = await asyncio.to_thread(scan, Path(directory))
                accepted = self.accepted.get(kind, [])
                found[kind] = complete_files(previous[kind], files, markers, time.time(), self.settle_s, accepted)
                previous[kind] = files
            if any(found.values()):
                self.log.info("complete drops: %s", found)
                yield TriggerEvent({"status": "dropped", "found": found})
                return
            if time.monotonic() - started >= self.idle_after_s:
                yield TriggerEvent({"status": "idle", "found": found})
                return
            await asyncio.sleep(self.poll_s)


class DropSensor(BaseOperator):
    """Deferrable sensor: waits in the triggerer (holding no worker slot) for complete drops.

    Returns (as XCom) kind -> {relative path: size} of the files to ingest; empty when it
    gave up after `idle_after`, so each run of a continuous DAG ends now and then.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, idle_after: timedelta = timedelta(hours=6), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.idle_after = idle_after

    def execute(self, context: Any) -> Found:
        # Paths come from the worker's settings at run time, not from the DAG processor's.
        from pipelines.drops import watched_targets
        from pipelines.settings import get_settings

        settings = get_settings()
        targets = watched_targets(settings)
        for target in targets:
            target.drop_dir.mkdir(parents=True, exist_ok=True)
            self.log.info(
                "watching %s for %s (complete: `<name>.done` marker, or unchanged for %.0f s)",
                target.drop_dir,
                target.kind,
                settings.drop_settle_s,
            )
        trigger = DropTrigger(
            {t.kind: str(t.drop_dir) for t in targets},
            settings.drop_settle_s,
            settings.drop_poll_s,
            self.idle_after.total_seconds(),
            {t.kind: list(t.accepted) for t in targets if t.accepted},
        )
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Found:
        found: Found = event["found"]
        self.log.info("%s: %s", event["status"], found or "no drops")
        return found


def ingest_and_announce(kind: str, found: Found, context: Mapping[str, Any]) -> list[str]:
    """Ingest one kind's complete files; skip (so no asset event) when there were none."""
    from airflow.sdk import Asset
    from airflow.sdk.exceptions import AirflowSkipException

    from pipelines.drops import drop_target, event_extra, ingest
    from pipelines.settings import get_settings

    expected = found.get(kind) or {}
    if not expected:
        raise AirflowSkipException(f"no complete {kind} drop")
    target = drop_target(get_settings(), kind)
    moved = ingest(target, expected)
    if not moved:
        raise AirflowSkipException(f"{kind} drop already taken or still changing: {sorted(expected)}")
    extra = event_extra(target, moved, source=f"drop folder {target.drop_dir}")
    context["outlet_events"][Asset(name=target.asset["name"], uri=target.asset["uri"])].extra = extra
    return moved
