"""The test tiers and the CI rule in tests/conftest.py, checked on a throwaway suite run by pytest itself.

`make check` deselects `integration` tests; under CI=true a skip fails the run (a skipped test there means
a tool `make test-deps` should have installed is missing).
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
SUITE = {
    "unit/test_fast.py": """
        import pytest
        def test_passes(): pass
        def test_skips(): pytest.skip("no such tool here")
        @pytest.mark.xfail(reason="known gap", strict=True)
        def test_known_gap(): assert False
        def test_needs_the_stack(stack): raise AssertionError("make check must not start the stack")
    """,
    "unit/test_skipped_module.py": """
        import pytest
        pytest.skip("module-level skip", allow_module_level=True)
    """,
    "integration/test_services.py": "def test_talks_to_weaviate(): raise AssertionError('not in make check')",
    "model/test_model.py": "def test_trains(): raise AssertionError('not in make check')",
    "reliability/test_faults.py": "def test_survives_a_crash(): raise AssertionError('not in make check')",
}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """A tests/ folder with the project's conftest and one file per tier."""
    pytester.makeconftest(CONFTEST.read_text())
    for name, body in SUITE.items():
        (pytester.path / name).parent.mkdir(parents=True, exist_ok=True)
        (pytester.path / name).write_text(textwrap.dedent(body))
    # The conftest points the environment at a state folder of its own: give this session's back.
    environ = dict(os.environ)
    os.environ.pop("PYTEST_XDIST_WORKER", None)  # the inner session is one process, whatever runs this one
    yield pytester
    os.environ.clear()
    os.environ.update(environ)


def test_fast_tier_deselects_service_folders_and_tests_that_use_the_stack(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest("-m", "not integration", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1, deselected=4)
    selected = suite.runpytest("-m", "integration", "--collect-only", "-q", "-p", "no:cacheprovider")
    collected = {line.split("::")[-1] for line in selected.outlines if "::" in line}
    assert collected == {"test_needs_the_stack", "test_talks_to_weaviate", "test_trains", "test_survives_a_crash"}


def test_a_skip_fails_the_run_under_ci_but_an_expected_failure_does_not(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-m", "not integration", "-p", "no:cacheprovider", "unit/test_fast.py")
    result.assert_outcomes(passed=1, failed=1, xfailed=1, deselected=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true*no such tool here*"])


def test_a_skipped_module_stops_collection_under_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider", "unit/test_skipped_module.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*skipped under CI=true*module-level skip*"])


def test_a_session_removes_the_state_folder_it_made_and_keeps_the_logs_of_a_failed_one(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    scratch = suite.path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the conftest's mkdtemp puts the state folder
    monkeypatch.delenv("PIPELINES_TEST_STATE", raising=False)
    (suite.path / "unit/test_leaves_state.py").write_text(
        textwrap.dedent("""
            import os
            from pathlib import Path
            def test_writes_a_service_log():
                logs = Path(os.environ["PIPELINES_STATE_DIR"]) / "logs"
                logs.mkdir(parents=True)
                (logs / "weaviate.log").write_text("shard refused the write")
                (Path(os.environ["PIPELINES_STATE_DIR"]) / "weaviate.bin").write_bytes(b"0" * 1024)
            def test_fails(): raise AssertionError("red")
        """)
    )
    artifacts = suite.path.parent / "test-artifacts" / "stack-logs" / "main"  # ARTIFACTS of the copied conftest
    shutil.rmtree(artifacts, ignore_errors=True)  # shared by the tests of this pytest run's basetemp
    passed = suite.runpytest("-p", "no:cacheprovider", "unit/test_leaves_state.py::test_writes_a_service_log")
    passed.assert_outcomes(passed=1)
    assert list(scratch.iterdir()) == []
    assert not artifacts.exists(), "a passing session kept logs"

    failed = suite.runpytest("-p", "no:cacheprovider", "unit/test_leaves_state.py")
    failed.assert_outcomes(passed=1, failed=1)
    assert list(scratch.iterdir()) == []
    assert (artifacts / "weaviate.log").read_text() == "shard refused the write"


def test_a_state_folder_named_by_the_developer_is_kept(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = suite.path / "my-state"
    monkeypatch.setenv("PIPELINES_TEST_STATE", str(mine))
    suite.runpytest("-p", "no:cacheprovider", "unit/test_fast.py::test_passes").assert_outcomes(passed=1)
    assert (mine / "airflow-dagtest").is_dir()


def test_under_xdist_the_training_files_share_one_worker(suite: pytest.Pytester) -> None:
    """`make test-integration` runs two workers; two trainings at once would each keep both cores busy."""
    log = suite.path / "ran.log"
    body = f"""
        import os, time
        def _record(name):
            time.sleep(0.3)  # long enough that both workers are busy while units are handed out
            with open({str(log)!r}, "a") as out:
                out.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{__file__}} {{name}}\\n")
        def test_a(): _record("a")
        def test_b(): _record("b")
    """
    training = ["integration/test_retrain_lora.py", "model/test_adapter_behaviour.py"]
    others = ["integration/test_quick.py", "reliability/test_other.py", "unit/test_more.py"]
    for name in training + others:
        (suite.path / name).parent.mkdir(parents=True, exist_ok=True)
        (suite.path / name).write_text(textwrap.dedent(body))
    # The Makefile's flags (XDIST).
    args = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder", "-p", "no:cacheprovider", *training, *others]
    suite.runpytest_subprocess(*args).assert_outcomes(passed=2 * len(training + others))
    rows = [line.split() for line in log.read_text().splitlines()]
    workers = {row[0] for row in rows if any(row[1].endswith(name) for name in training)}
    assert len(workers) == 1, f"the training files ran on {sorted(workers)}"
    assert len({row[0] for row in rows}) == 2, "the other files should use the second worker"


def test_a_kept_test_state_gets_the_checkouts_sample_not_its_first_copy(tmp_path: Path) -> None:
    """PIPELINES_TEST_STATE keeps its project between sessions; its data must follow the checkout's sample."""
    from conftest import refresh_sample

    source, project = tmp_path / "data", tmp_path / "project"
    (source / "training").mkdir(parents=True)
    train = source / "training" / "train.jsonl"
    train.write_text('{"id": "old"}\n')
    assert refresh_sample(project, source)
    assert not refresh_sample(project, source), "an unchanged sample is not copied again"
    train.write_text('{"id": "new"}\n')  # the checkout's training set changes between sessions
    assert refresh_sample(project, source)
    assert (project / "data" / "training" / "train.jsonl").read_text() == '{"id": "new"}\n'
