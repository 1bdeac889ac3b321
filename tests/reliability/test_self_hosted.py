"""Self-hosted: the default path calls no host outside the deployment.

The CLI runs in a child process whose every proxy variable points at a recording proxy and whose
NO_PROXY lists only loopback, so any library that reaches for the internet through the usual HTTP
stacks (requests, httpx, urllib, huggingface_hub) knocks on the proxy instead. The child gets
none of the test session's opt-outs (HF_HUB_OFFLINE, DVC_NO_ANALYTICS, PYTEST_CURRENT_TEST, CI):
what it must not call, the product itself has to switch off.
"""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import sample_reports, settings_env, write_reports

from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Opt-outs the test session sets for itself (conftest, CI runners); the child must do without them.
SESSION_OPT_OUTS = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "DVC_NO_ANALYTICS",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "GX_ANALYTICS_ENABLED",
    "PYTEST_CURRENT_TEST",  # MLflow turns its telemetry off under pytest and in CI
    "CI",
    "GITHUB_ACTIONS",
)


class _Recorder(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        line = self.request.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        self.server.seen.append(line)  # type: ignore[attr-defined]
        self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[str]]]:
    """A proxy on loopback that refuses every request and records its first line (CONNECT host:port, GET url)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def offline_env(settings: Settings, proxy_url: str) -> dict[str, str]:
    env = settings_env(settings)
    for name in SESSION_OPT_OUTS:
        env.pop(name, None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def test_reindex_and_ask_call_no_host_outside_the_deployment(kb: Settings, proxy: tuple[str, list[str]]) -> None:
    proxy_url, seen = proxy
    write_reports(kb.data_dir / "documents", sample_reports(4))
    # Floor off: the model must really load and generate, so its loading path is covered too.
    env = {**offline_env(kb, proxy_url), "ANSWER_RELEVANCE_FLOOR": "0"}
    assert "PYTEST_CURRENT_TEST" not in env and "HF_HUB_OFFLINE" not in env

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipelines.cli", *argv]
        return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)

    indexed = cli("reindex")
    assert indexed.returncode == 0, f"`pipelines reindex` failed:\n{indexed.stderr[-3000:]}"
    # `ask --json` exits 1 for an answer that is off format or unsupported; either way it has run end to end.
    asked = cli("ask", "--json", "--groups", "everyone", "What do banks need to prepare for?")
    answer = json.loads(asked.stdout)
    assert answer["text"] and answer["model"] and answer["retrieved"], asked.stderr[-3000:]
    assert seen == [], f"outside calls from the default path: {sorted(set(seen))}"
