"""The Airflow and MLflow UIs, driven in headless Chromium: what an operator sees and clicks.

Screenshots land in test-artifacts/ui-*.png.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import wait_until_idle

from pipelines.orchestration.api import FINISHED, AirflowApi, AirflowApiError
from pipelines.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
RUN_TIMEOUT_S = 1500
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, artifacts_dir: Path) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        yield page
    finally:
        page.screenshot(path=str(artifacts_dir / "ui-last-page.png"), full_page=True)
        context.close()


def _shot(page, artifacts_dir: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(artifacts_dir / f"ui-{name}.png"), full_page=True)


def _log_in(page, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    page.goto(settings.airflow_url + "/")
    page.wait_for_url("**/auth/login**")
    fields = page.locator("input")
    fields.nth(0).fill(settings.airflow_admin_user)
    fields.nth(1).fill(settings.airflow_admin_password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


def _wait_for_run(api: AirflowApi, run_id: str, page, artifacts_dir: Path) -> str:  # type: ignore[no-untyped-def]
    """The UI's POST may still be in flight when the click returns: a 404 first is not a failure."""
    path = f"/dags/reindex_documents/dagRuns/{run_id}"
    created_by = time.monotonic() + 120
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        try:
            state = api.call("GET", path)["state"]
        except AirflowApiError as error:
            if "404" not in str(error) or time.monotonic() > created_by:
                _shot(page, artifacts_dir, "03-trigger-not-created")
                raise
            time.sleep(2)
            continue
        if state in FINISHED:
            return str(state)
        assert time.monotonic() < deadline, f"{run_id} still {state}"
        time.sleep(5)


def test_operator_logs_in_sees_schedules_and_triggers_reindex_with_a_param(
    airflow_stack: Settings, page, artifacts_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    stack = airflow_stack
    api = AirflowApi(stack)
    for dag_id in ("reindex_documents", "retrain_lora", "ingest_drops"):
        api.wait_for_dag(dag_id)
    api.unpause("reindex_documents")
    try:
        wait_until_idle(api, "reindex_documents")
        _log_in(page, stack)
        _shot(page, artifacts_dir, "01-logged-in")

        page.goto(stack.airflow_url + "/dags")
        for dag_id in ("reindex_documents", "retrain_lora", "ingest_drops"):
            page.get_by_role("link", name=dag_id, exact=True).wait_for()
        # Asset-or-time schedules show their asset; the watcher shows @continuous. The list fills in the
        # asset names after the DAGs (a second request), so look again for a while before failing.
        wanted, missing = ("@continuous", "documents", "training_data"), ["not looked yet"]
        deadline = time.monotonic() + 60
        while missing and time.monotonic() < deadline:
            page.wait_for_timeout(2000)
            text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
            missing = [schedule for schedule in wanted if schedule not in text]
            if missing:
                page.reload()
        assert not missing, f"schedules {missing} not shown on the DAG list"
        _shot(page, artifacts_dir, "02-dag-list")

        page.goto(stack.airflow_url + "/dags/reindex_documents")
        page.get_by_test_id("trigger-dag-button").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Full rebuild").wait_for()
        dialog.get_by_text("Build a new versioned collection").wait_for()  # the param's description
        switch = dialog.locator("input[name='element_full_rebuild']")
        dialog.locator("label:has(input[name='element_full_rebuild'])").click()  # the input is visually hidden
        assert switch.is_checked()
        run_id = f"ui_full_rebuild_{uuid.uuid4().hex[:8]}"
        dialog.get_by_text("Advanced Options").click()
        dialog.locator("input[name='dagRunId']").fill(run_id)
        _shot(page, artifacts_dir, "03-trigger-form")
        dialog.get_by_test_id("trigger-dag-submit").click()

        run_page = f"{stack.airflow_url}/dags/reindex_documents/runs/{run_id}"
        state = _wait_for_run(api, run_id, page, artifacts_dir)
        page.goto(run_page)
        page.get_by_text(run_id).first.wait_for()
        page.get_by_text("success").first.wait_for()
        _shot(page, artifacts_dir, "04-run-succeeded")
        assert state == "success", f"{run_id} ended {state}; see {artifacts_dir}/ui-04-run-succeeded.png"
        run = api.call("GET", f"/dags/reindex_documents/dagRuns/{run_id}")
        # The form sends every param: the ticked one, and the mass-change override left unticked.
        assert run["conf"] == {"full_rebuild": True, "allow_mass_change": False}
        # The run's note (on its page) links the MLflow run the tasks logged to.
        assert (run.get("note") or "").startswith(f"MLflow run: {stack.tracking_uri}/#/experiments/"), run.get("note")
        page.get_by_text("MLflow run:").first.wait_for()
    finally:
        api.call("PATCH", "/dags/reindex_documents", json={"is_paused": True})


def _echo_model():  # type: ignore[no-untyped-def]
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
            return model_input

    return Echo()


def _champion_model(settings: Settings) -> tuple[str, str]:
    """A registered model with a champion alias, registered and promoted through the project's registry."""
    import mlflow
    from pipelines.behaviour import registry
    from pipelines.tracking import configure

    ui = settings.model_copy(update={"registered_model": f"{settings.registered_model}-ui-check"})
    configure(ui)
    mlflow.set_experiment("ui-check")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="adapter", python_model=_echo_model(), pip_requirements=["mlflow"])
    version = registry.register(ui, info.model_uri, {"source": "test_ui_browser"}, run.info.run_id)
    # An echo model has no gate verdict: making it champion is an override, recorded with its reason.
    registry.promote(ui, version, "test_ui_browser", "UI check of an ungated echo model", override=True)
    return ui.registered_model, version


def test_mlflow_ui_shows_the_registered_model_and_its_champion(stack: Settings, page, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    name, version = _champion_model(stack)
    page.goto(f"{stack.tracking_uri}/#/models")
    page.get_by_text(name, exact=True).first.wait_for()
    _shot(page, artifacts_dir, "05-mlflow-models")
    page.goto(f"{stack.tracking_uri}/#/models/{name}")
    page.get_by_text("champion").first.wait_for()
    _shot(page, artifacts_dir, "06-mlflow-champion")
    page.goto(f"{stack.tracking_uri}/#/models/{name}/versions/{version}")
    page.get_by_text("champion").first.wait_for()
    _shot(page, artifacts_dir, "07-mlflow-champion-version")
