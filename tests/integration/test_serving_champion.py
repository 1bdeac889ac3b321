"""The answering service's champion follows the real MLflow registry, swaps atomically and fails closed.

Versions are untrained LoRA adapters registered in seconds (`serving_support.register_adapter`), logged
and hashed like trained ones, under the module's own registered model.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY
from serving_support import register_adapter, register_unverifiable

from pipelines.behaviour import registry
from pipelines.serving.champion import ChampionHolder, ChampionNotReady
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Own registered model, experiment and signal file; a poll interval long enough that only signals act."""
    tag = uuid.uuid4().hex[:6]
    return stack.model_copy(
        update={
            "registered_model": f"serving-champion-{tag}",
            "training_experiment": f"serving-champion-{tag}",
            "state_dir": tmp_path_factory.mktemp("serving-champion"),
            "champion_poll_s": 600.0,
        }
    )


@pytest.fixture(scope="module")
def versions(env: Settings) -> list[str]:
    """Two adapters, the first made champion (an ungated test adapter: promoted with a recorded override)."""
    found = [register_adapter(env, seed) for seed in (1, 2)]
    registry.promote(env, found[0], "test_serving_champion", "serving test champion", override=True)
    return found


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _wait(condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def _promote(env: Settings, version: str) -> None:
    registry.promote(env, version, "test_serving_champion", "serving test swap", override=True)


def test_holder_is_not_ready_until_the_first_load_then_serves_the_verified_champion(
    env: Settings, versions: list[str]
) -> None:
    holder = ChampionHolder(env)
    assert not holder.ready
    with pytest.raises(ChampionNotReady):
        holder.current()
    assert holder.refresh() is True
    loaded = holder.current()
    recorded = registry._client(env).get_model_version(env.registered_model, versions[0]).tags
    assert (loaded.version, loaded.adapter_sha256) == (versions[0], recorded[registry.ADAPTER_HASH_TAG])
    assert holder.refresh() is False  # alias unchanged: nothing reloaded
    assert holder.current() is loaded


def test_promotion_signal_swaps_without_failing_or_mixing_requests_and_rollback_swaps_back(
    env: Settings, versions: list[str]
) -> None:
    import torch

    holder = ChampionHolder(env)
    holder.start()
    try:
        assert holder.wait_ready(120)
        first = holder.current()
        assert first.version == versions[0]
        seen: list[str | None] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def requests() -> None:
            # Each "request" takes the reference once and runs its model end to end.
            ids = first.tokenizer("Policy", return_tensors="pt").input_ids
            while not stop.is_set():
                try:
                    loaded = holder.current()
                    with torch.no_grad():
                        loaded.model(ids)
                    seen.append(loaded.version)
                except BaseException as err:  # noqa: BLE001 - collected and asserted below
                    errors.append(err)

        worker = threading.Thread(target=requests)
        worker.start()
        _wait(lambda: len(seen) > 0)  # requests are running on the old version before the alias moves
        started = time.monotonic()
        _promote(env, versions[1])  # touches the signal file; the poll interval is 10 minutes
        _wait(lambda: holder.current().version == versions[1])
        swapped_after = time.monotonic() - started
        count = len(seen)
        _wait(lambda: len(seen) > count)  # and at least one request ran after the swap
        stop.set()
        worker.join()
        assert holder.current().version == versions[1], f"no swap after {swapped_after:.0f} s"
        assert not errors
        assert seen[0] == versions[0] and seen[-1] == versions[1], seen
        assert seen == sorted(seen, key=lambda v: v != versions[0]), "a request saw the old version after the new"
        assert first.version == versions[0]  # the reference a request held is untouched by the swap

        registry.rollback(env, "test_serving_champion", "rollback under service")
        _wait(lambda: holder.current().version == versions[0])
        assert holder.current().version == versions[0]
    finally:
        holder.stop()


def test_a_version_failing_verification_is_refused_and_the_champion_keeps_serving(
    env: Settings, versions: list[str]
) -> None:
    holder = ChampionHolder(env)
    holder.refresh()
    serving = holder.current()
    assert serving.version == versions[0]
    tampered = register_adapter(env, seed=3)
    registry.tag_version(env, tampered, {registry.ADAPTER_HASH_TAG: "0" * 64})  # files no longer match the record
    unverifiable = register_unverifiable(env)  # records no hash at all
    try:
        for bad, reason in ((tampered, "do not match the hash recorded"), (unverifiable, "records no adapter.sha256")):
            failures = _count("champion_load_failures_total")
            _promote(env, bad)
            assert holder.refresh() is False
            assert holder.current() is serving
            status = holder.status()
            assert status.failed_version == bad and "IntegrityError" in (status.last_error or "")
            assert reason in (status.last_error or "")
            assert _count("champion_load_failures_total") == failures + 1
    finally:
        _promote(env, versions[0])
    assert holder.refresh() is False and holder.status().last_error is None  # the alias back on what serves


class _Proxy(BaseHTTPRequestHandler):
    """Forwards to the real MLflow server; while `down`, answers every request 503."""

    upstream = ""
    down = False

    def _forward(self) -> None:
        import requests

        if type(self).down:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        reply = requests.request(self.command, self.upstream + self.path, data=body, headers=headers, timeout=60)
        self.send_response(reply.status_code)
        for key, value in reply.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(env: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Proxy]]:
    handler = type("Handler", (_Proxy,), {"upstream": env.tracking_uri, "down": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes of back-off
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_registry_error_never_unloads_the_champion(env: Settings, versions: list[str], proxy: type[_Proxy]) -> None:
    holder = ChampionHolder(env.model_copy(update={"mlflow_tracking_uri": proxy.url}))  # type: ignore[attr-defined]
    try:
        holder.refresh()
        serving = holder.current()
        assert serving.version == versions[0]
        proxy.down = True
        _promote(env, versions[1])  # the alias moves, but the service cannot see the registry
        errors = _count("champion_registry_errors_total")
        assert holder.refresh() is False
        assert holder.current() is serving and holder.ready
        assert "503" in (holder.status().last_error or "")
        assert _count("champion_registry_errors_total") == errors + 1
        proxy.down = False  # the registry is back: the next check catches up
        assert holder.refresh() is True and holder.current().version == versions[1]
    finally:
        proxy.down = False
        _promote(env, versions[0])
