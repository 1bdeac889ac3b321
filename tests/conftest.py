"""Shared fixtures: one real local stack per test session, on ports of its own.

The environment is set here, before anything imports `pipelines.settings` or
Airflow, so a developer's running stack (default ports, ./state) is never touched.
"""

from __future__ import annotations

import hashlib
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
SERVICE_FIXTURES = {"stack", "airflow_stack", "kb"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real services or trains models (set by tests/conftest.py)")
    config.addinivalue_line(
        "markers", "measures_quality: the verdict rests on measured retrieval quality; `kb` keeps the full settle"
    )


# Scheduling under xdist (`make test-integration`, `--dist loadfile`). Every file is a unit of its own, so module
# fixtures are built once, except the files that train models: they share one unit and so run one after another on
# one worker. Each trains with two torch threads and keeps both cores busy; two at once slowed each 2.3 times (idle
# 2-core run, 2026-11-29), while the other files are half waits (settle sleeps, Airflow polls: 55 % of the CPU sat
# idle in a one-process run) that fill the cores beside one training. (xdist's own `loadgroup` cannot do this under
# pytest 9: it renames `item._nodeid`, which pytest no longer reads.)
TRAINING_FILES = (
    "integration/test_retrain_lora.py",  # 149 s in one process
    "model/test_adapter_behaviour.py",  # 109 s
    "reliability/test_behaviour_fail_closed.py",  # 64 s
    "model/test_kl_to_base.py",  # two 12-step runs
)
# The files that drive the stack's Airflow (`airflow_stack`) share a unit as well, so only one worker starts it.
AIRFLOW_FILES = (
    "integration/test_drops.py",  # 164 s
    "integration/test_demo_runs_once.py",  # 47 s
    "integration/test_ui_browser.py",  # 46 s
    "integration/test_stack.py",  # 19 s
    "reliability/test_drops_symlink.py",  # 10 s
)
# Units handed out first, longest first (one process, 2026-11-29): workers take units in collection order (the
# Makefile passes --no-loadscope-reorder), and a long unit handed out last would run alone at the end.
LONGEST_FIRST = (
    "training",  # 322 s
    "reliability/test_index_fail_closed.py",  # 300 s
    "reliability/test_crash_convergence.py",  # 296 s
    "airflow",  # 286 s
    "integration/test_reindex.py",  # 242 s
)


def work_unit(nodeid: str) -> str:
    """The xdist unit of a test: its file relative to tests/, or "training" / "airflow" for those groups."""
    relative = nodeid.split("::", 1)[0].removeprefix("tests/")
    return "training" if relative in TRAINING_FILES else "airflow" if relative in AIRFLOW_FILES else relative


@pytest.hookimpl(tryfirst=True)  # before xdist's own choice of scheduler (the hook takes the first answer)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WorkUnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that need real services or models as `integration`, by folder or by fixture; longest units first."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        folder = item.path.relative_to(tests_dir).parts[0] if item.path.is_relative_to(tests_dir) else ""
        if folder in INTEGRATION_DIRS or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)

    def rank(item: pytest.Item) -> int:
        unit = work_unit(item.nodeid)
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)

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
    else:  # a kept state folder (PIPELINES_TEST_STATE): test this checkout's sample, not its first session's copy
        refresh_sample(TEST_STATE / "project")
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """Weaviate and MLflow, really started once per session and stopped by PID (with Airflow, if it was started)."""
    stack_module.up(settings, with_airflow=False)
    try:
        yield settings
    finally:
        stack_module.down(settings)


@pytest.fixture(scope="session")
def airflow_stack(stack: Settings) -> Settings:
    """The stack with Airflow too (scheduler, DAG processor, triggerer, API server), started on first use.

    Only the tests that drive the stack's Airflow ask for it: its four processes cost about a minute of CPU to
    start and keep polling, and under xdist a worker that runs none of those tests never starts them.
    """
    stack_module.up(stack, with_airflow=True)  # Weaviate and MLflow are running: only Airflow starts
    return stack


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
        refresh_sample(root)
    return root


def sample_fingerprint(data: Path) -> str:
    """sha256 over every file of a sample folder, names and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(data)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def refresh_sample(root: Path, source: Path = ROOT / "data") -> bool:
    """Copy the checkout's sample into the project at `root` unless its copy is already this one; True if copied.

    A developer's kept state folder once held a day-old train.jsonl: tests of a new training set ran, and passed or
    failed, on the old one. The fingerprint sits beside the project, not in it (the project is a git repository).
    """
    marker = root.parent / f"{root.name}.sample-sha256"
    current = sample_fingerprint(source)
    if (root / "data").exists() and marker.exists() and marker.read_text() == current:
        return False
    shutil.rmtree(root / "data", ignore_errors=True)
    shutil.copytree(source, root / "data")
    marker.write_text(current)
    return True


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


# The settle wait of a `kb` run (issue 13). The product waits `Settings.settle_wait_s` (7.5 s here) after a run's
# last write, so the gate never measures keyword scores on writes still in a memtable; about 60 runs in the suite
# slept 7.5 s each. Tests that only check what a run wrote, refused or kept (not how well it retrieves) wait 2.5 s,
# as the crash tests long have: their gate compares a few changed chunks with a 0.15 tolerance. A test whose
# verdict rests on measured quality (a full rebuild's gate, a tight tolerance, the flush itself) is marked
# `measures_quality` and keeps the product's wait.
SHORT_SETTLE_S = 2.5


@pytest.fixture
def kb(stack: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
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
            "weaviate_settle_s": (
                stack.weaviate_settle_s if request.node.get_closest_marker("measures_quality") else SHORT_SETTLE_S
            ),
        }
    )
