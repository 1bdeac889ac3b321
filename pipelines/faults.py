"""Named crash points for the reliability tests: `kill -9` at an exact place in a run.

`Settings.crash_at` (env `PIPELINES_CRASH_AT`, a comma-separated list of point names) makes
the process SIGKILL itself when it reaches one of them: no `finally`, no atexit, exactly what
an OOM kill or a lost node does. Empty (the default, and always in production) costs one
string test per point. The points are listed in `CRASH_POINTS` so a test can cover them all.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from pipelines.settings import Settings

log = logging.getLogger(__name__)

CRASH_POINTS = (
    "after_plan",  # plan made, nothing embedded or written
    "mid_write",  # after the first page of new chunks
    "after_write",  # new chunks written, none retired
    "mid_retire",  # after the first page of retirements
    "after_index",  # index step done, candidate manifest staged
    "before_commit",  # gate passed, manifest not yet committed
    "after_commit",  # manifest committed, readers not yet switched
    "after_publish",  # readers switched, retired chunks not yet deleted
    "mid_gc",  # after the first page of deletions of retired chunks
    "before_moves_cleared",  # retired chunks gone, manifest still lists pending position moves
    "full_mid_write",  # full rebuild: after the first page into the new collection
    "full_after_alias",  # full rebuild: alias re-pointed, old versions not yet dropped
    "dvc_add",  # `dvc add` killed while it runs, then this process
)


def crash_point(settings: Settings, name: str) -> None:
    """SIGKILL this process if `name` is one of the configured crash points."""
    if not settings.crash_at or name not in settings.crash_at.split(","):
        return
    log.warning("crash point %s: killing process %d", name, os.getpid())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)
