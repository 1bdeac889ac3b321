"""The local stack, really started: health, round trips, and loopback-only sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from pipelines.devstack import stack as stack_module
from pipelines.settings import Settings


def test_every_service_answers_its_health_endpoint(airflow_stack: Settings) -> None:
    stack = airflow_stack
    assert requests.get(f"{stack.weaviate_http_url}/v1/.well-known/ready", timeout=5).status_code == 200
    assert requests.get(f"{stack.tracking_uri}/health", timeout=5).text.strip() == "OK"
    health = requests.get(f"{stack.airflow_url}/api/v2/monitor/health", timeout=5).json()
    for component in ("metadatabase", "scheduler", "dag_processor", "triggerer"):
        assert health[component]["status"] == "healthy", health


def test_second_up_is_harmless_and_keeps_the_same_processes(airflow_stack: Settings) -> None:
    stack = airflow_stack
    before = stack_module.status(stack)
    stack_module.up(stack, with_airflow=True, echo=lambda _: None)
    assert stack_module.status(stack) == before
    assert all(pid for name, pid in before.items() if name != "serve")  # tests start their own answering service


def test_weaviate_round_trip(stack: Settings) -> None:
    from pipelines.knowledge.index import connect

    name = f"Roundtrip_{uuid.uuid4().hex[:8]}"
    with connect(stack) as client:
        from weaviate.classes.config import Configure, DataType, Property

        collection = client.collections.create(
            name,
            vector_config=Configure.Vectors.self_provided(),
            properties=[Property(name="text", data_type=DataType.TEXT)],
        )
        try:
            collection.data.insert({"text": "the quarterly report on banking"}, vector=[1.0, 0.0, 0.0])
            collection.data.insert({"text": "a recipe for bread"}, vector=[0.0, 1.0, 0.0])
            near = collection.query.near_vector([0.9, 0.1, 0.0], limit=1).objects
            keyword = collection.query.bm25("bread", limit=1).objects
            assert near[0].properties["text"] == "the quarterly report on banking"
            assert keyword[0].properties["text"] == "a recipe for bread"
        finally:
            client.collections.delete(name)


def test_mlflow_round_trip_with_registry_alias(stack: Settings) -> None:
    import mlflow
    from mlflow import MlflowClient
    from pipelines.tracking import configure

    configure(stack)
    mlflow.set_experiment("stack-roundtrip")
    name = f"roundtrip-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run() as run:
        mlflow.log_metric("answer", 42.0)
        mlflow.log_dict({"hello": "world"}, "note.json")
    client = MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/note.json", run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    assert client.get_run(run.info.run_id).data.metrics["answer"] == 42.0
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/note.json") == {"hello": "world"}


def test_dvc_add_push_pull_round_trip(tmp_path: Path, dvc_project_factory) -> None:
    project = dvc_project_factory(tmp_path / "p", with_data=False)
    (project / "data").mkdir()
    (project / "data" / "doc.txt").write_text("version one")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "add", "-q", "data"], cwd=project, check=True)
    subprocess.run([*dvc, "push", "-q"], cwd=project, check=True)
    subprocess.run(["rm", "-rf", "data", ".dvc/cache"], cwd=project, check=True)
    subprocess.run([*dvc, "pull", "-q"], cwd=project, check=True)
    assert (project / "data" / "doc.txt").read_text() == "version one"


def _listening_sockets() -> list[tuple[str, int, int]]:
    """(address, port, inode) of every listening TCP socket, from /proc/net/tcp*."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address_hex)[::-1])
            else:
                raw = bytes.fromhex(address_hex)
                address = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
            found.append((address, int(port_hex, 16), int(fields[9])))
    return found


def _socket_inodes_of(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return inodes


def _process_tree(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def test_stack_listens_on_loopback_only(airflow_stack: Settings) -> None:
    stack = airflow_stack
    pids = _process_tree({pid for pid in stack_module.status(stack).values() if pid})
    ours = _socket_inodes_of(pids)
    listening = [(addr, port) for addr, port, inode in _listening_sockets() if inode in ours]
    print("listening:", sorted(listening))
    assert {stack.weaviate_http_port, stack.weaviate_grpc_port, stack.mlflow_port, stack.airflow_port} <= {
        port for _, port in listening
    }
    exposed = [(addr, port) for addr, port in listening if addr not in ("127.0.0.1", "::1")]
    assert not exposed, f"stack listens beyond loopback: {exposed}"


def test_embedded_mode_uses_the_locally_built_binary_offline(tmp_path: Path, settings: Settings) -> None:
    import weaviate

    binary_dir = Path.home() / ".cache" / "weaviate-embedded"
    if not any(binary_dir.glob(f"weaviate-v{settings.weaviate_version}-*")):
        pytest.fail("scripts/build_weaviate.sh did not install the embedded binary")
    client = weaviate.connect_to_embedded(
        version=settings.weaviate_version,
        port=18190,
        grpc_port=50191,
        persistence_data_path=str(tmp_path / "embedded"),
        environment_variables={
            "WEAVIATE_LISTEN_HOST": "127.0.0.1",
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": "18191",
            "CLUSTER_DATA_BIND_PORT": "18192",
            "RAFT_PORT": "18193",
            "RAFT_INTERNAL_RPC_PORT": "18194",
            "GO_PROFILING_DISABLE": "true",
            "DISABLE_TELEMETRY": "true",
        },
    )
    try:
        assert client.is_ready()
        assert client.get_meta()["version"] == settings.weaviate_version
    finally:
        client.close()
