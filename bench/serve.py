"""Answering-service load benchmark: search and ask at 1, 4 and 16 clients, then a champion swap under load.

    python bench/serve.py [--search-requests 160] [--ask-requests 8] [--max-seconds 90]

Loopback only, bounded in requests and time per phase. Starts Weaviate and MLflow if they are not
running, indexes the sample documents into a fresh collection (own DVC project under a temp folder),
registers two small untrained adapters under a bench model (the first champion), and runs the real
app (`uvicorn --factory pipelines.serving.app:app_from_env`, as `pipelines serve`) as a child process,
so client and server do not share a GIL. Each phase keeps N clients busy with back-to-back requests;
reported: p50 / p95 / p99 latency, requests/s, errors. The swap phase runs ask and search load while
the champion alias moves (`promote`, which signals the service) and checks that no request fails and
no answer names the old version after one named the new. Writes bench/results/serve.json. The app
process is stopped at the end; Weaviate and MLflow stay up as after `pipelines up` (`pipelines down`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from pipelines.behaviour import registry
from pipelines.devstack import stack
from pipelines.knowledge.reindex import run_reindex
from pipelines.serving.auth import KeyStore
from pipelines.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from benchkit import load_note, scratch_dir  # noqa: E402 - bench/ is on sys.path when run as a script
from serving_support import register_adapter  # noqa: E402 - the tests' cheap adapter registration

LEVELS = (1, 4, 16)
QUESTIONS = [json.loads(line)["text"] for line in (ROOT / "data" / "golden" / "queries.jsonl").read_text().splitlines()]


@dataclass(frozen=True)
class Sample:
    """One request: when it finished (s since phase start), how long it took, status, model version."""

    done_s: float
    latency_s: float
    status: int
    version: str


@dataclass(frozen=True)
class PhaseResult:
    route: str
    clients: int
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def summarise(route: str, clients: int, samples: list[Sample], seconds: float) -> PhaseResult:
    """Latency percentiles (successful requests), throughput and error count of one phase."""
    ok = np.array([s.latency_s for s in samples if s.status == 200]) * 1000
    pct = np.percentile(ok, [50, 95, 99]) if len(ok) else np.array([np.nan] * 3)
    errors = sum(s.status != 200 for s in samples)
    return PhaseResult(
        route,
        clients,
        len(samples),
        errors,
        round(seconds, 2),
        round(len(samples) / seconds, 2),
        *(round(float(v), 1) for v in pct),
    )


async def load(
    base: str, key: str, route: str, clients: int, requests: int, max_s: float
) -> tuple[list[Sample], float]:
    """`clients` workers send back-to-back requests until `requests` are done or `max_s` passes."""
    headers = {"Authorization": f"Bearer {key}"}
    samples: list[Sample] = []
    issued = 0
    started = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() - started < max_s:
            question = QUESTIONS[issued % len(QUESTIONS)]
            issued += 1
            body = {"query": question, "k": 5} if route == "search" else {"question": question}
            sent = time.perf_counter()
            try:
                reply = await client.post(f"{base}/v1/{route}", json=body, headers=headers)
                status = reply.status_code
                version = reply.json().get("model_version", "") if route == "ask" and status == 200 else ""
            except httpx.HTTPError:
                status, version = 0, ""
            now = time.perf_counter()
            samples.append(Sample(now - started, now - sent, status, version))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return samples, time.perf_counter() - started


def make_project(root: Path) -> Path:
    """A throwaway git + DVC project with the sample documents and golden set (as the tests build)."""
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    remote = root.parent / "dvc-remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], cwd=root, check=True)
    for part in ("documents", "golden"):
        shutil.copytree(ROOT / "data" / part, root / "data" / part)
    return root


def start_server(settings: Settings, port: int, logs: Path) -> subprocess.Popen[bytes]:
    """The real app under uvicorn in its own process group, configured through its environment."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "PIPELINES_STATE_DIR": str(settings.state_dir),
        "PIPELINES_DATA_DIR": str(settings.data_dir),
        "WEAVIATE_HTTP_PORT": str(settings.weaviate_http_port),
        "WEAVIATE_GRPC_PORT": str(settings.weaviate_grpc_port),
        "WEAVIATE_API_KEY_FILE": str(settings.weaviate_api_key_file),
        "WEAVIATE_COLLECTION": settings.collection_alias,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "REGISTERED_MODEL": settings.registered_model,
        "API_KEYS_FILE": str(settings.api_keys_path),
        "CHAMPION_POLL_S": str(settings.champion_poll_s),
        "FEEDBACK_DB_URL": settings.feedback_url,
        "VECTOR_CACHE_PATH": str(settings.vector_cache_path),
    }
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "pipelines.serving.app:app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    out = logs.open("ab")
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the answering service exited; see its log")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the answering service was not ready after {timeout_s} s")


def swap_phase(base: str, key: str, settings: Settings, new: str, old: str, args: argparse.Namespace) -> dict:
    """Ask and search load at 4 clients each while the champion moves from `old` to `new`."""
    moved_at: list[float] = []

    async def run() -> tuple[tuple[list[Sample], float], tuple[list[Sample], float]]:
        started = time.perf_counter()

        def promote_later() -> None:
            time.sleep(args.swap_after_s)
            moved_at.append(time.perf_counter() - started)
            registry.promote(settings, new, "bench/serve.py", "champion swap under load", override=True)

        threading.Thread(target=promote_later, daemon=True).start()
        return await asyncio.gather(
            load(base, key, "ask", 4, args.swap_ask_requests, args.max_seconds * 2),
            load(base, key, "search", 4, 100_000, args.swap_after_s * 4),
        )

    (asks, ask_s), (searches, search_s) = asyncio.run(run())
    by_time = sorted(asks, key=lambda s: s.done_s)
    versions = [s.version for s in by_time if s.status == 200]
    first_new = next((s.done_s for s in by_time if s.version == new), None)
    mixed = any(a == new and b == old for a, b in zip(versions, versions[1:], strict=False))
    return {
        "ask": asdict(summarise("ask", 4, asks, ask_s)),
        "search": asdict(summarise("search", 4, searches, search_s)),
        "failed_requests": sum(s.status != 200 for s in asks + searches),
        "versions_in_completion_order": versions,
        "old_after_new": mixed,
        "promoted_at_s": moved_at[0] if moved_at else None,
        "first_new_answer_at_s": first_new,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search-requests", type=int, default=160, help="per concurrency level")
    parser.add_argument("--ask-requests", type=int, default=8, help="per concurrency level (CPU generation is slow)")
    parser.add_argument("--swap-ask-requests", type=int, default=12)
    parser.add_argument("--swap-after-s", type=float, default=8.0, help="seconds into the swap phase")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time bound of each phase")
    parser.add_argument("--port", type=int, default=22500)
    args = parser.parse_args()

    base_settings = get_settings()
    stack.up(base_settings, with_airflow=False)
    work = scratch_dir("bench-serve-")
    tag = uuid.uuid4().hex[:6]
    settings = base_settings.model_copy(
        update={
            "data_dir": make_project(work / "project") / "data",
            "state_dir": work / "state",
            "collection_alias": f"BenchServe{tag}",
            "reindex_experiment": f"bench-serve-{tag}",
            "registered_model": f"bench-serve-{tag}",
            "training_experiment": f"bench-serve-{tag}",
            "api_keys_file": work / "state" / "secrets" / "api-keys.json",
            "vector_cache_file": base_settings.vector_cache_path,  # embeddings of the sample are reused
            "champion_poll_s": 600.0,  # only the promotion signal moves the champion during the bench
        }
    )
    print(f"indexing the sample into {settings.collection_alias} …")
    assert run_reindex(settings, allow_mass_change=True).accepted
    print("registering two adapters …")
    old, new = register_adapter(settings, 1, "bench"), register_adapter(settings, 2, "bench")
    registry.promote(settings, old, "bench/serve.py", "bench champion", override=True)
    _, key = KeyStore(settings.api_keys_path).create("bench", [])
    base = f"http://127.0.0.1:{args.port}"
    server = start_server(settings, args.port, work / "server.log")
    results: dict = {"levels": []}
    try:
        wait_ready(base, server, 600)
        for clients in LEVELS:
            for route, n in (("search", args.search_requests), ("ask", args.ask_requests)):
                samples, seconds = asyncio.run(load(base, key, route, clients, n, args.max_seconds))
                phase = summarise(route, clients, samples, seconds)
                results["levels"].append(asdict(phase))
                print(
                    f"{route:6s} x{clients:<2d}: {phase.requests:4d} req {phase.req_per_s:7.2f}/s "
                    f"p50 {phase.p50_ms:7.1f} p95 {phase.p95_ms:7.1f} p99 {phase.p99_ms:7.1f} ms, "
                    f"{phase.errors} errors"
                )
        print("champion swap under load …")
        results["swap"] = swap_phase(base, key, settings, new, old, args)
        swap = results["swap"]
        print(
            f"swap: {swap['failed_requests']} failed, old after new: {swap['old_after_new']}, "
            f"promoted at {swap['promoted_at_s']:.1f} s, first new answer at {swap['first_new_answer_at_s']} s"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    results.update(
        {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "machine_note": "compare ratios between phases of this run, not absolute numbers across runs; "
            + load_note(),
            "settings": {
                "generation_tokens": settings.eval_max_new_tokens,
                "answer_contexts": settings.answer_contexts,
            },
            "args": vars(args),
            "server_log": str(work / "server.log"),
        }
    )
    out = ROOT / "bench" / "results" / "serve.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
