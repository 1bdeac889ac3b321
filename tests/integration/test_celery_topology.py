"""The production topology, really run: Airflow 3 on the CeleryExecutor with PostgreSQL and Redis.

PostgreSQL and Redis are Debian's (`make test-deps`), started here on loopback. Airflow gets the
same environment as the local stack (`pipelines.devstack.stack.airflow_env`) plus the overrides that
docker-compose.yml sets; the DAGs and the `pipelines` code are the project's own, unchanged.
A file dropped into this instance's drop folder must come out of `ingest_drops` (deferred in the
triggerer, run by a Celery worker) as a `documents` asset event recorded in PostgreSQL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from pipelines.devstack.stack import airflow_env
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found or not shutil.which("redis-server"):
        pytest.fail("PostgreSQL or Redis is missing: run `make test-deps`")
    return found[-1].parent


@dataclass
class Processes:
    """Processes this test started, each leading its own group; stopped newest first, by PID."""

    logs: Path
    started: list[tuple[str, subprocess.Popen]]

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, user: str | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=user,
            cwd=ROOT,
        )
        self.started.append((name, process))

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def assert_alive(self) -> None:
        dead = [name for name, p in self.started if p.poll() is not None]
        assert not dead, f"exited early: {dead}; see logs in {self.logs}"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path) -> Iterator[tuple[Processes, dict]]:
    """PostgreSQL and Redis on loopback; PostgreSQL as a non-root user (it refuses to run as root)."""
    pg_bin = _postgres_bin()
    logs = artifacts_dir / "celery-topology-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    procs = Processes(logs, [])
    # Outside pytest's 0700 tmp tree, so the unprivileged user can reach it; short for the socket path.
    pg_dir = Path(tempfile.mkdtemp(prefix="pg-"))
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        entry = pwd.getpwnam(user)
        os.chown(pg_dir, entry.pw_uid, entry.pw_gid)
    pg_port, redis_port = _free_port(), _free_port()
    try:
        subprocess.run(
            [str(pg_bin / "initdb"), "-D", str(pg_dir / "data"), "-U", "airflow", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=user,
        )
        procs.start(
            "postgres",
            [
                str(pg_bin / "postgres"),
                "-D",
                str(pg_dir / "data"),
                "-k",
                str(pg_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(pg_port),
            ],
            user=user,
        )
        procs.start(
            "redis",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        )
        _wait_for(
            lambda: (
                subprocess.run(
                    [str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg_port)], capture_output=True
                ).returncode
                == 0
            ),
            60,
            "postgres",
        )
        subprocess.run(
            [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "airflow", "airflow"],
            check=True,
            capture_output=True,
        )
        yield procs, {"pg_port": pg_port, "redis_port": redis_port}
    finally:
        procs.stop_all()
        shutil.rmtree(pg_dir, ignore_errors=True)


def _wait_for(check, timeout_s: float, what: str, procs: Processes | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        if procs:
            procs.assert_alive()
        time.sleep(2)
    raise AssertionError(f"{what} not ready after {timeout_s:.0f}s")


def celery_overrides(pg_port: int, redis_port: int) -> dict[str, str]:
    """What docker-compose.yml changes for Airflow, with this test's hosts and ports."""
    db = f"airflow@127.0.0.1:{pg_port}/airflow"
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
    }


def test_compose_sets_the_same_airflow_overrides() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["x-airflow-common"]["environment"]
    assert set(celery_overrides(1, 2)) <= set(environment)
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@pytest.fixture(scope="module")
def celery_airflow(services: tuple[Processes, dict], settings: Settings, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """api-server, scheduler, dag-processor, triggerer and a Celery worker on PostgreSQL + Redis."""
    procs, ports = services
    root = tmp_path_factory.mktemp("celery-airflow")
    ours = settings.model_copy(
        update={"state_dir": root / "state", "data_dir": root / "data", "airflow_port": _free_port()}
    )
    env = {
        **os.environ,
        **airflow_env(ours),
        **celery_overrides(ports["pg_port"], ports["redis_port"]),
        "PIPELINES_STATE_DIR": str(ours.state_dir),
        "PIPELINES_DATA_DIR": str(ours.data_dir),
        "AIRFLOW_PORT": str(ours.airflow_port),
        "DROP_SETTLE_SECONDS": "5",
        "DROP_POLL_SECONDS": "2",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
    }
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, f"airflow db migrate failed:\n{migrate.stderr[-3000:]}"
    api = ours.airflow_url
    procs.start(
        "airflow-api-server",
        [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(ours.airflow_port), "--workers", "1"],
        env,
    )
    procs.start("airflow-scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"], env)
    procs.start("airflow-dag-processor", [AIRFLOW, "dag-processor"], env)
    procs.start("airflow-triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"], env)
    procs.start(
        "airflow-celery-worker",
        [AIRFLOW, "celery", "worker", "--concurrency", "2", "--without-gossip", "--without-mingle", "-H", "worker1@%h"],
        env,
    )

    def healthy() -> bool:
        health = requests.get(f"{api}/api/v2/monitor/health", timeout=5).json()
        return all(
            health[c]["status"] == "healthy" for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    _wait_for(healthy, 300, "Airflow on Celery", procs)
    return ours, ports


def test_a_drop_runs_through_celery_workers_on_postgres_and_redis(celery_airflow, services) -> None:  # type: ignore[no-untyped-def]
    import psycopg2
    import redis

    from pipelines.orchestration.api import AirflowApi

    settings, ports = celery_airflow
    procs, _ = services
    api = AirflowApi(settings)
    api.wait_for_dag("ingest_drops", timeout_s=300)
    drop = settings.documents_drop_dir / "celery.jsonl"
    drop.parent.mkdir(parents=True, exist_ok=True)
    drop.write_text('{"_id": "celery-1", "title": "Celery", "text": "Tasks ran on a Celery worker."}\n')

    def ingested() -> bool:
        procs.assert_alive()
        runs = api.call("GET", "/dags/ingest_drops/dagRuns", params={"state": ["success"]})["dag_runs"]
        return any(
            t["task_id"] == "ingest_documents" and t["state"] == "success"
            for r in runs
            for t in api.call("GET", f"/dags/ingest_drops/dagRuns/{r['dag_run_id']}/taskInstances")["task_instances"]
        )

    _wait_for(ingested, 420, "ingest_drops success on Celery", procs)
    assert (settings.data_dir / "documents" / "celery.jsonl").exists()

    with psycopg2.connect(host="127.0.0.1", port=ports["pg_port"], user="airflow", dbname="airflow") as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                "WHERE a.name = 'documents' AND e.source_dag_id = 'ingest_drops'"
            )
            assert cur.fetchone()[0] >= 1, "the asset event is not in PostgreSQL"
            cur.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
            assert cur.fetchone()[0] >= 2, "no Celery results in the result backend"
    assert redis.Redis(host="127.0.0.1", port=ports["redis_port"]).info("stats")["total_commands_processed"] > 0
    worker_log = (procs.logs / "airflow-celery-worker.log").read_text(errors="replace")
    assert "Executing workload in Celery" in worker_log and "task_id=ingest_documents" in worker_log, (
        "ingest_documents did not run on the Celery worker"
    )
