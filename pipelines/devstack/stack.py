"""The local service stack: Weaviate, MLflow, Airflow 3 and the answering service, all on 127.0.0.1.

`up` starts each service that is not already running, waits for its health check
and records its PID under `state/run/`; `down` stops exactly those PIDs. Data lives
under the state folder, so it survives a restart. Airflow runs every task in its
own process, which is why Weaviate runs as one long-lived server here rather than
in embedded mode (an embedded instance dies with the process that started it).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from pipelines import offline_env
from pipelines.settings import Settings

# Start order; `down` stops in reverse.
SERVICE_NAMES = [
    "weaviate",
    "mlflow",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "serve",
]


class StackError(RuntimeError):
    """A service of the local stack could not be started or checked."""


@dataclass(frozen=True)
class Service:
    """One process of the stack, with the URL that proves it is healthy."""

    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    healthy: Callable[[requests.Response], bool] = lambda r: r.status_code == 200
    start_timeout_s: float = 120.0


def weaviate_binary(settings: Settings) -> Path:
    """The Weaviate server built by `scripts/build_weaviate.sh`."""
    name = f"weaviate-server-v{settings.weaviate_version}"
    path = Path(os.environ.get("WEAVIATE_BIN_DIR", Path.home() / ".local" / "bin")) / name
    if not path.exists():
        raise StackError(f"{path} is missing: run `make setup` (scripts/build_weaviate.sh) first")
    return path


def weaviate_ports(settings: Settings) -> dict[str, int]:
    """Cluster ports derived from the HTTP port, so two stacks never collide."""
    base = settings.weaviate_http_port
    return {"gossip": base + 1, "data": base + 2, "raft": base + 3, "raft_rpc": base + 4}


def weaviate_api_key(settings: Settings) -> str:
    """The local Weaviate's API key: WEAVIATE_API_KEY, else a key generated once into a 0600 file."""
    if settings.weaviate_api_key:
        return settings.weaviate_api_key
    path = settings.weaviate_api_key_file
    assert path is not None  # set by Settings' validator
    if not path.is_file():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL + 0600 at creation: the key is never readable by others, not even for a moment.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another `up` made it meanwhile
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def weaviate_service(settings: Settings) -> Service:
    ports = weaviate_ports(settings)
    env = {
        "PERSISTENCE_DATA_PATH": str(settings.state_dir / "weaviate"),
        # Any local process (or a DNS-rebinding page) could read every object anonymously:
        # only holders of the key get in, and that key's user is the only admin.
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
        "AUTHENTICATION_APIKEY_ENABLED": "true",
        "AUTHENTICATION_APIKEY_ALLOWED_KEYS": weaviate_api_key(settings),
        "AUTHENTICATION_APIKEY_USERS": "pipelines",
        "AUTHORIZATION_ADMINLIST_ENABLED": "true",
        "AUTHORIZATION_ADMINLIST_USERS": "pipelines",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "DISABLE_TELEMETRY": "true",
        "GO_PROFILING_DISABLE": "true",
        "PROMETHEUS_MONITORING_ENABLED": "false",
        "QUERY_DEFAULTS_LIMIT": "25",
        "PERSISTENCE_MEMTABLES_FLUSH_DIRTY_AFTER_SECONDS": str(settings.weaviate_memtable_flush_s),
        "CLUSTER_HOSTNAME": "node1",
        "CLUSTER_BIND_ADDR": "127.0.0.1",
        "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
        "CLUSTER_GOSSIP_BIND_PORT": str(ports["gossip"]),
        "CLUSTER_DATA_BIND_PORT": str(ports["data"]),
        "RAFT_PORT": str(ports["raft"]),
        "RAFT_INTERNAL_RPC_PORT": str(ports["raft_rpc"]),
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "RAFT_JOIN": "node1",
        "GRPC_PORT": str(settings.weaviate_grpc_port),
        # Honoured by our loopback patch (scripts/build_weaviate.sh): upstream binds ":port".
        "WEAVIATE_LISTEN_HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
    }
    argv = [
        str(weaviate_binary(settings)),
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.weaviate_http_port),
        "--scheme",
        "http",
    ]
    return Service(
        "weaviate",
        argv,
        f"http://127.0.0.1:{settings.weaviate_http_port}/v1/.well-known/ready",
        env,
    )


def mlflow_server_options(settings: Settings) -> list[str]:
    """`--option value` pairs from mlflow/server.conf."""
    options: list[str] = []
    for line in (settings.project_dir / "mlflow" / "server.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            options += [f"--{key.strip()}", value.strip().format(state_dir=settings.state_dir)]
    return options


def mlflow_service(settings: Settings) -> Service:
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.mlflow_port),
        *mlflow_server_options(settings),
        "--serve-artifacts",
    ]
    # MLflow 3's job runner (GenAI scorer and prompt-optimisation jobs) is a runner and seven huey consumers, each
    # importing MLflow (2.4 s of CPU each, ~17 s per start on 2 cores), for jobs this project never queues.
    # The server runs MLflow without this package, so it is handed the opt-outs (no usage telemetry) here.
    env = {**offline_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Service("mlflow", argv, f"http://127.0.0.1:{settings.mlflow_port}/health", env)


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment shared by every Airflow component (and so by every task)."""
    home = settings.state_dir / "airflow"
    secrets_file = home / "stack-secrets.json"
    home.mkdir(parents=True, exist_ok=True)
    if not secrets_file.exists():
        secrets_file.write_text(json.dumps({"jwt": secrets.token_urlsafe(32)}))
    jwt_secret = json.loads(secrets_file.read_text())["jwt"]
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({settings.airflow_admin_user: settings.airflow_admin_password}))
    api = settings.airflow_url
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project_dir / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "pipelines.orchestration.db.CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "pipelines.orchestration.db.ASYNC_CONNECT_ARGS",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_HOST": "127.0.0.1",
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PYTHONPATH": str(settings.project_dir),
        **offline_env(),  # every Airflow process, not only those that import this package
    }


def _airflow_component_healthy(component: str) -> Callable[[requests.Response], bool]:
    def healthy(response: requests.Response) -> bool:
        if response.status_code != 200:
            return False
        status = response.json().get(component) or {}
        return status.get("status") == "healthy"

    return healthy


def airflow_services(settings: Settings) -> list[Service]:
    env = airflow_env(settings)
    airflow = str(Path(sys.executable).parent / "airflow")
    health = f"{settings.airflow_url}/api/v2/monitor/health"
    return [
        Service(
            "airflow-api-server",
            [airflow, "api-server", "--host", "127.0.0.1", "--port", str(settings.airflow_port), "--workers", "1"],
            health,
            env,
            _airflow_component_healthy("metadatabase"),
            start_timeout_s=180,
        ),
        Service(
            "airflow-scheduler",
            [airflow, "scheduler", "--skip-serve-logs"],
            health,
            env,
            _airflow_component_healthy("scheduler"),
            180,
        ),
        Service(
            "airflow-dag-processor",
            [airflow, "dag-processor"],
            health,
            env,
            _airflow_component_healthy("dag_processor"),
            180,
        ),
        Service(
            "airflow-triggerer",
            [airflow, "triggerer", "--skip-serve-logs"],
            health,
            env,
            _airflow_component_healthy("triggerer"),
            180,
        ),
    ]


def serve_service(settings: Settings) -> Service:
    """The answering service (issue 11): healthy once Weaviate answers and the champion (or base model) is loaded."""
    cli = str(Path(sys.executable).parent / "pipelines")
    # The child reads its settings from the environment: pass what this stack's settings say.
    env = {
        "SERVE_HOST": settings.serve_host,
        "SERVE_PORT": str(settings.serve_port),
        "PIPELINES_STATE_DIR": str(settings.state_dir),
        "WEAVIATE_COLLECTION": settings.collection_alias,
        "API_KEYS_FILE": str(settings.api_keys_path),
    }
    return Service("serve", [cli, "serve"], f"http://127.0.0.1:{settings.serve_port}/readyz", env, start_timeout_s=300)


def all_services(settings: Settings, with_airflow: bool = True, with_serve: bool = False) -> list[Service]:
    services = [weaviate_service(settings), mlflow_service(settings)]
    services += airflow_services(settings) if with_airflow else []
    return services + ([serve_service(settings)] if with_serve else [])


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.state_dir / "run" / f"{name}.pid"


def running_pid(settings: Settings, name: str) -> int | None:
    """The PID recorded for a service, if that process is still alive."""
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def _is_healthy(service: Service) -> bool:
    try:
        return service.healthy(requests.get(service.health_url, timeout=5))
    except (requests.RequestException, ValueError):
        return False


def _wait_healthy(service: Service, pid: int, log: Path) -> None:
    deadline = time.monotonic() + service.start_timeout_s
    while time.monotonic() < deadline:
        if _is_healthy(service):
            return
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = 0
        if finished:
            tail = log.read_text(errors="replace")[-2000:]
            raise StackError(f"{service.name} exited during start-up; end of {log}:\n{tail}")
        time.sleep(1)
    raise StackError(f"{service.name} not healthy after {service.start_timeout_s:.0f}s; see {log}")


def migrate_airflow_db(settings: Settings) -> None:
    """Create or upgrade Airflow's metadata database (idempotent)."""
    env = {**os.environ, **airflow_env(settings)}
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    # One writer at a time on the Weaviate collection, whichever DAG writes.
    subprocess.run(
        [airflow, "pools", "set", "weaviate_writer", "1", "Serialises writes to the Weaviate collection"],
        env=env,
        check=True,
        capture_output=True,
    )


def up(
    settings: Settings, with_airflow: bool = True, echo: Callable[[str], None] = print, with_serve: bool = False
) -> None:
    """Start every service that is not running yet and wait until each is healthy (`make up`: with the service)."""
    for sub in ("run", "logs", "weaviate", "mlflow/artifacts"):
        (settings.state_dir / sub).mkdir(parents=True, exist_ok=True)
    if with_airflow:
        migrate_airflow_db(settings)
    for service in all_services(settings, with_airflow, with_serve):
        pid = running_pid(settings, service.name)
        if pid is not None:
            echo(f"{service.name}: already running (pid {pid})")
            continue
        log = settings.state_dir / "logs" / f"{service.name}.log"
        env = {**os.environ, **service.env}
        with log.open("ab") as out:
            process = subprocess.Popen(
                service.argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=settings.project_dir,
            )
        _pid_file(settings, service.name).write_text(str(process.pid))
        echo(f"{service.name}: starting (pid {process.pid}, log {log})")
        _wait_healthy(service, process.pid, log)
        echo(f"{service.name}: healthy at {service.health_url}")


def down(settings: Settings, echo: Callable[[str], None] = print, only: Sequence[str] | None = None) -> None:
    """Stop exactly the processes `up` recorded (or those of them named in `only`), newest first."""
    for name in reversed([n for n in SERVICE_NAMES if only is None or n in only]):
        pid = running_pid(settings, name)
        if pid is None:
            continue
        _stop_group(pid)
        _pid_file(settings, name).unlink(missing_ok=True)
        echo(f"{name}: stopped (pid {pid})")


def _stop_group(pid: int, timeout_s: float = 30.0) -> None:
    # Each service leads its own session, so its group holds its workers too.
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.3)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def status(settings: Settings) -> dict[str, int | None]:
    """PID of each service of the stack, or None when it is not running."""
    return {name: running_pid(settings, name) for name in SERVICE_NAMES}
