"""`make up` starts the answering service on loopback, health-checked; `make down` stops it (issue 11)."""

from __future__ import annotations

import os

import httpx
import pytest
from serving_http import free_port

from pipelines.devstack import stack as stack_module
from pipelines.settings import Settings


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_up_starts_the_answering_service_on_loopback_and_down_stops_only_it(stack: Settings) -> None:
    settings = stack.model_copy(update={"serve_port": free_port()})
    stack_module.up(settings, with_airflow=False, with_serve=True)  # the rest is running: only `serve` starts
    pid = stack_module.running_pid(settings, "serve")
    try:
        assert pid is not None
        url = f"http://127.0.0.1:{settings.serve_port}"
        assert httpx.get(f"{url}/readyz", timeout=10).json()["checks"] == {"weaviate": "ok", "model": "ok"}
        assert httpx.post(f"{url}/v1/search", json={"query": "x"}, timeout=10).status_code == 401
        assert _listening(settings.serve_port) == {"0100007F"}, "the service listens beyond 127.0.0.1"
    finally:
        stack_module.down(settings, only=["serve"])
    assert stack_module.running_pid(settings, "serve") is None
    with pytest.raises(ProcessLookupError):  # down stopped and reaped it
        os.kill(pid, 0)  # type: ignore[arg-type]
    assert stack_module.running_pid(settings, "weaviate") is not None, "down(only=serve) stopped the rest"
