"""The chat page in headless Chromium: sign in with an API key, ask, watch the stream, open a source.

An `hr` user and a user without `hr` ask the same question of the same service (the real Weaviate,
the base model answering); only the first sees the restricted document, in the streamed answer and
among the passages it can open. Screenshots land in test-artifacts/chat-*.png.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving_http import ServerThread
from serving_support import create_key
from tests_support import sample_reports, write_reports

from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.serving.app import create_app
from pipelines.serving.feedback import FeedbackStore
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SECRET_DOC = "salary-bands.md"
SECRET_VALUE = "zeta-19"
SECRET_TEXT = (
    "---\nacl: [hr]\n---\n# Salary bands\n\n"
    f"The salary band for grommet engineers at level three is {SECRET_VALUE} per month, paid in arrears."
)
QUESTION = "What is the salary band for grommet engineers at level three?"
pytestmark = pytest.mark.slow


@dataclass
class Chat:
    url: str
    keys: dict[str, str]
    store: FeedbackStore


@pytest.fixture(scope="module")
def chat(stack: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    from conftest import TEST_STATE, make_dvc_project

    from pipelines.behaviour.answering import load_version
    from pipelines.serving.service import StaticChampion

    root = tmp_path_factory.mktemp("chat")
    project = make_dvc_project(root / "project", with_data=False)
    shutil.copytree(ROOT / "data" / "golden", project / "data" / "golden")
    tag = uuid.uuid4().hex[:8]
    settings = stack.model_copy(
        update={
            "data_dir": project / "data",
            "state_dir": root / "state",
            "collection_alias": f"Chat{tag}",
            "reindex_experiment": f"chat-test-{tag}",
            "vector_cache_file": TEST_STATE / "vectors.sqlite",
            "retrieval_tolerance": 0.15,
            "api_keys_file": root / "state" / "secrets" / "api-keys.json",
        }
    )
    docs = settings.data_dir / "documents"
    write_reports(docs, sample_reports(4))
    (docs / SECRET_DOC).write_text(SECRET_TEXT)
    assert run_reindex(settings, embedder=embedder).accepted
    keys = {name: create_key(settings, name, groups) for name, groups in (("hr", "hr"), ("staff", "finance"))}
    store = FeedbackStore(settings.feedback_url)
    champion = StaticChampion(load_version(settings, None))
    with ServerThread(create_app(settings, champion=champion, feedback=store)) as server:
        yield Chat(server.url, keys, store)


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


def _ask_as(browser, chat: Chat, who: str, artifacts_dir: Path):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(300_000)
    page.goto(f"{chat.url}/chat/")
    page.fill("#api-key", chat.keys[who])
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#chat", state="visible")
    # The key is in the page's memory only: nothing stored where another script or a reload finds it.
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    page.fill("#question", QUESTION)
    page.click("#ask")
    page.wait_for_function("() => document.getElementById('answer').textContent.length > 0")  # tokens stream in
    page.wait_for_function("() => document.getElementById('model').textContent.length > 0")  # the final event
    page.screenshot(path=str(artifacts_dir / f"chat-{who}-answer.png"), full_page=True)
    return context, page


def test_only_the_hr_user_sees_the_restricted_document_and_can_open_its_chunk(
    chat: Chat, browser, artifacts_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    secret = f"button[data-doc-id='{SECRET_DOC}']"
    context, page = _ask_as(browser, chat, "hr", artifacts_dir)
    try:
        assert SECRET_VALUE in page.inner_text("#answer")  # streamed from the restricted document
        # Citations need house-format labels, which the base model does not write; the retrieved
        # passages list the same chunks the answer was given, under the caller's identity.
        page.wait_for_selector(f"#sources {secret}")
        page.locator(f"#sources {secret}").first.click()
        page.wait_for_selector("#source", state="visible")
        assert SECRET_VALUE in page.inner_text("#chunk")
        assert page.inner_text("#source-doc") == SECRET_DOC
        page.screenshot(path=str(artifacts_dir / "chat-hr-source.png"), full_page=True)
        # Feedback from the page lands in the store under the caller's subject.
        page.click("#thumbs-up")
        page.wait_for_function("() => document.getElementById('feedback-status').textContent.includes('stored')")
        stored = chat.store.list()[-1]
        assert stored.subject.endswith(":hr") and stored.rating == "up"
    finally:
        context.close()

    context, page = _ask_as(browser, chat, "staff", artifacts_dir)
    try:
        page.wait_for_function("() => document.getElementById('sources').children.length > 0")
        page.screenshot(path=str(artifacts_dir / "chat-staff-answer.png"), full_page=True)
        assert page.locator(f"#citations {secret}, #sources {secret}").count() == 0
        assert SECRET_VALUE not in page.inner_text("body")
        page.click("#sign-out")
        assert page.locator("#sign-in").is_visible()
    finally:
        context.close()
