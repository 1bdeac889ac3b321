"""Shared fixtures: one real local stack per test session, on ports of its own.

The environment is set here, before anything imports `pipelines.settings` or
Airflow, so a developer's running stack (default ports, ./state) is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Under pytest-xdist (`make test-integration TEST_WORKERS=N`) each worker is a session of its own: its own stack
# on its own ports and its own state folder, so workers never share a Weaviate, a metadata DB or a cache.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
WORKER_INDEX = int(WORKER.removeprefix("gw")) if WORKER.startswith("gw") else 0
_state = os.environ.get("PIPELINES_TEST_STATE")
TEST_STATE = Path(f"{_state}-{WORKER}" if _state and WORKER else _state or tempfile.mkdtemp(prefix="pipelines-test-"))
# A state folder this session made for itself is removed when it ends (pytest_unconfigure): a stack's state is
# about 1 GB (MLflow artifacts, Weaviate, Airflow), and left behind by every run it filled CI's disk.
# A folder named in PIPELINES_TEST_STATE belongs to the developer and is kept.
OWN_STATE = not _state
ARTIFACTS = ROOT / "test-artifacts"

for var in (
    "WEAVIATE_URL",
    "WEAVIATE_GRPC_URL",
    "WEAVIATE_API_KEY",
    "MLFLOW_TRACKING_URI",
    "DOCUMENTS_URL",
    "AIRFLOW_API_URL",
):
    os.environ.pop(var, None)
# Ports may be overridden so that two test sessions can run side by side.
DEFAULT_PORTS = {"WEAVIATE_HTTP_PORT": 18090, "WEAVIATE_GRPC_PORT": 50061, "MLFLOW_PORT": 15050, "AIRFLOW_PORT": 18080}
# Worker N shifts every port by 1000 * N: Weaviate takes http..http+4 (stack.weaviate_ports), so blocks never overlap.
for var, port in DEFAULT_PORTS.items():
    os.environ[var] = str(int(os.environ.get(var, port)) + 1000 * WORKER_INDEX)
os.environ.update(
    PIPELINES_STATE_DIR=str(TEST_STATE / "stack"),
    # Runs of the real scheduler (drops, UI triggers) read and `dvc add` a copy, never ./data.
    PIPELINES_DATA_DIR=str(TEST_STATE / "project" / "data"),
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    GIT_PYTHON_REFRESH="quiet",
    DVC_NO_ANALYTICS="1",  # no outside calls, and no analytics daemon per `dvc` command
)

# dag.test() runs tasks in this process against a metadata DB of its own, so the
# stack's scheduler never sees (and never races) those runs.
_DAGTEST_HOME = TEST_STATE / "airflow-dagtest"
_DAGTEST_HOME.mkdir(parents=True, exist_ok=True)
os.environ.update(
    AIRFLOW_HOME=str(_DAGTEST_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{_DAGTEST_HOME / 'airflow.db'}",
    AIRFLOW__CORE__UNIT_TEST_MODE="False",
)

from pipelines.devstack import stack as stack_module  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

# Tiers. Tests in these folders, or that use the real stack, need services or trained models: they get the
# `integration` marker, which `make check` deselects (`-m "not integration"`) and `.ci/run` runs second.
INTEGRATION_DIRS = {"integration", "reliability", "model"}
SERVICE_FIXTURES = {"stack", "kb"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real services or trains models (set by tests/conftest.py)")


# The longest test files (seconds, one process, CI of 2026-11-28), collected first under xdist: it hands files to
# workers in collection order, and a long file handed out last would run alone at the end (longest first).
LONGEST_FILES = (
    "reliability/test_crash_convergence.py",  # 342 s
    "integration/test_reindex.py",  # 225 s
    "reliability/test_index_fail_closed.py",  # 215 s
    "integration/test_retrain_lora.py",  # 172 s
    "integration/test_drops.py",  # 157 s
    "model/test_adapter_behaviour.py",  # 125 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that need real services or models as `integration`, by folder or by fixture; longest files first."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        folder = item.path.relative_to(tests_dir).parts[0] if item.path.is_relative_to(tests_dir) else ""
        if folder in INTEGRATION_DIRS or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)

    def rank(item: pytest.Item) -> int:
        relative = item.path.relative_to(tests_dir).as_posix() if item.path.is_relative_to(tests_dir) else ""
        return LONGEST_FILES.index(relative) if relative in LONGEST_FILES else len(LONGEST_FILES)

    if WORKER:  # only under xdist: one process keeps the collected order CI has always run
        items.sort(key=rank)  # stable: within a file, and among the rest, the collected order stays


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """CI must run every test: a skip there hides a missing tool (make test-deps), so it fails the run."""
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    if in_ci and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run (install with make test-deps): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_skip_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_skip_in_ci(report)
    return report


_SESSION_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_SESSION_FAILED] = exitstatus != pytest.ExitCode.OK


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's own state folder, after every fixture (the stack among them) is torn down.

    A failed session first copies the services' logs to test-artifacts/stack-logs/, which is what one reads
    to see why; the rest (indexes, models, databases) goes.
    """
    if not OWN_STATE:
        return
    logs = TEST_STATE / "stack" / "logs"
    try:
        if config.stash.get(_SESSION_FAILED, False) and logs.is_dir():
            kept = ARTIFACTS / "stack-logs" / (WORKER or "main")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(logs, kept)
    finally:  # the folder goes even when keeping the logs failed (a full disk is what this guards against)
        shutil.rmtree(TEST_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the test stack (separate ports, state folder and data project)."""
    if not (TEST_STATE / "project" / "data").exists():
        make_dvc_project(TEST_STATE / "project")
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """Weaviate, MLflow and Airflow, really started once per session and stopped by PID."""
    stack_module.up(settings, with_airflow=True)
    try:
        yield settings
    finally:
        stack_module.down(settings)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB for dag.test() runs in this process."""
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    return _DAGTEST_HOME


def make_dvc_project(root: Path, with_data: bool = True) -> Path:
    """A throwaway git + DVC project holding a copy of the tracked sample under data/."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    remote = root.parent / f"{root.name}-remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], cwd=root, check=True)
    if with_data:
        shutil.copytree(ROOT / "data", root / "data")
    return root


@pytest.fixture
def dvc_project_factory() -> Callable[..., Path]:
    """`make_dvc_project` as a fixture, for tests that need several projects."""
    return make_dvc_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh DVC project with the sample data, for tests that version data."""
    return make_dvc_project(tmp_path / "project")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save things people want to look at (screenshots, plots)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def embedder():
    """One loaded encoder for the whole session (loading costs seconds)."""
    from pipelines.knowledge.embedding import Embedder

    return Embedder(Settings().embedding_model_path)


@pytest.fixture
def kb(stack: Settings, tmp_path: Path) -> Settings:
    """Settings for an isolated knowledge base: own DVC project, alias, experiment and state.

    Services are the session's real Weaviate and MLflow; vectors are cached per session.
    """
    import uuid

    project = make_dvc_project(tmp_path / "project", with_data=False)
    shutil.copytree(ROOT / "data" / "golden", project / "data" / "golden")
    tag = uuid.uuid4().hex[:8]
    return stack.model_copy(
        update={
            "data_dir": project / "data",
            "state_dir": tmp_path / "state",
            "collection_alias": f"Kb{tag}",
            "reindex_experiment": f"reindex-test-{tag}",
            "vector_cache_file": TEST_STATE / "vectors.sqlite",
            # A handful of documents: one query moving a rank shifts the mean by ~0.05.
            "retrieval_tolerance": 0.15,
        }
    )
