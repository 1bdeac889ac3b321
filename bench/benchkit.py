"""Small helpers every benchmark shares: scratch folders that do not outlive the run, and a measured load note."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A new folder under the system temp dir, removed when the benchmark process exits (even on an error)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def load_note() -> str:
    """How busy the machine was when the result was written, measured rather than assumed."""
    one, five, fifteen = os.getloadavg()
    return (
        f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) on {os.cpu_count()} cores when "
        "written; above the core count other work shared the CPU and absolute seconds are inflated"
    )
