"""The feedback store on a real PostgreSQL (as in compose): rows, JSON citations and reviews round-trip."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.serving.feedback import CitedChunk, FeedbackRequest, FeedbackStore


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL on loopback, run as `nobody` when the tests run as root; stopped by PID."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.fail("PostgreSQL is missing: run `make test-deps`")
    pg_bin = found[-1].parent
    pg_dir = Path(tempfile.mkdtemp(prefix="pg-feedback-"))
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        entry = pwd.getpwnam(user)
        os.chown(pg_dir, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    process = None
    try:
        subprocess.run(
            [str(pg_bin / "initdb"), "-D", str(pg_dir / "data"), "-U", "feedback", "--auth=trust"],
            check=True,
            capture_output=True,
            user=user,
        )
        process = subprocess.Popen(
            [
                str(pg_bin / "postgres"),
                "-D",
                str(pg_dir / "data"),
                "-k",
                str(pg_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            user=user,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ready = [str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        deadline = time.monotonic() + 60
        while subprocess.run(ready, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and process.poll() is None, "postgres did not start"
            time.sleep(0.3)
        createdb = [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "feedback", "feedback"]
        subprocess.run(createdb, check=True, capture_output=True)
        yield f"postgresql+psycopg2://feedback@127.0.0.1:{port}/feedback"
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGINT)  # fast shutdown: pooled connections may still be open
            process.wait(30)
        shutil.rmtree(pg_dir, ignore_errors=True)


def test_feedback_round_trips_through_postgresql_and_review_is_recorded(postgres_url: str) -> None:
    store = FeedbackStore(postgres_url)
    cited = [CitedChunk(1, "c-1", "doc.md", "A title", "Text of the chunk ünïcode.", ("public",))]
    request = FeedbackRequest(
        question="Why?", answer="Because.", model_version="4", rating="down", correction="  Because of X.  "
    )
    first = store.add("alice", request, cited)
    second = store.add("bob", request.model_copy(update={"rating": "up", "correction": None}), [])
    assert FeedbackStore(postgres_url).get(first).citations == tuple(cited)  # another engine reads it
    stored = store.get(first)
    assert (stored.subject, stored.rating, stored.correction, stored.reviewed) == (
        "alice",
        "down",
        "Because of X.",
        False,
    )
    assert [r.id for r in store.list(reviewed=False)] == [first, second]
    assert store.review(first, "carol").reviewed_by == "carol"
    assert [r.id for r in store.list(reviewed=True)] == [first]
    with pytest.raises(KeyError):
        store.review(first + 1000, "carol")
