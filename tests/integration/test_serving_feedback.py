"""Feedback over HTTP into a real database, reviewed and exported into the training drop (issue 11 item 5).

The app runs in uvicorn against the real Weaviate with a knowledge base holding public sample reports
and one `hr`-only document. Cited chunks are read back from the index under the caller's groups;
exported corrections land in the training drop, where the existing validation (GX: PII, leakage)
refuses a correction carrying PII; corrections citing restricted documents are held back.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serving_http import ServerThread
from serving_support import create_key, pipelines_cli
from tests_support import sample_reports, write_reports

from pipelines.behaviour.dataset import TRAIN_FILE, TrainingData, load_training_data, read_records
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.serving.app import create_app
from pipelines.serving.feedback import FeedbackStore, export_corrections
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_WORDS = "grommet engineers salary band"
SECRET_TEXT = f"---\nacl: [hr]\n---\n# Salary bands\n\nThe {SECRET_WORDS} for level 3 is confidential: " + " ".join(
    f"grommet{i}" for i in range(80)
)
SSN = "123-45-6789"


@dataclass
class Service:
    url: str
    settings: Settings
    store: FeedbackStore
    keys: dict[str, str]


@pytest.fixture(scope="module")
def service(stack: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from conftest import TEST_STATE, make_dvc_project

    root = tmp_path_factory.mktemp("feedback")
    project = make_dvc_project(root / "project", with_data=False)
    for part in ("golden", "training"):
        shutil.copytree(ROOT / "data" / part, project / "data" / part)
    tag = uuid.uuid4().hex[:8]
    settings = stack.model_copy(
        update={
            "data_dir": project / "data",
            "state_dir": root / "state",
            "collection_alias": f"Feedback{tag}",
            "reindex_experiment": f"feedback-test-{tag}",
            "vector_cache_file": TEST_STATE / "vectors.sqlite",
            "retrieval_tolerance": 0.15,
            "api_keys_file": root / "state" / "secrets" / "api-keys.json",
        }
    )
    docs = settings.data_dir / "documents"
    write_reports(docs, sample_reports(4))
    (docs / "salary-bands.md").write_text(SECRET_TEXT)
    assert run_reindex(settings, embedder=embedder).accepted
    keys = {name: create_key(settings, name, groups) for name, groups in (("hr", "hr"), ("public", ""))}
    store = FeedbackStore(settings.feedback_url)
    with ServerThread(create_app(settings, feedback=store)) as server:
        yield Service(server.url, settings, store, keys)


def _post(svc: Service, path: str, body: object, caller: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {svc.keys[caller]}"} if caller else {}
    return httpx.post(f"{svc.url}{path}", json=body, headers=headers, timeout=120)


def _hits(svc: Service, caller: str, query: str) -> list[dict]:
    reply = _post(svc, "/v1/search", {"query": query, "k": 10}, caller)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["hits"])


def _feedback(question: str, chunk_ids: list[str], correction: str | None = None, rating: str = "down") -> dict:
    return {
        "question": question,
        "answer": "the model's answer",
        "model_version": "3",
        "rating": rating,
        "correction": correction,
        "cited_chunk_ids": chunk_ids,
    }


def test_feedback_needs_a_caller_and_cannot_cite_what_the_caller_may_not_read(service: Service) -> None:
    restricted = [h["chunk_id"] for h in _hits(service, "hr", SECRET_WORDS) if h["doc_id"] == "salary-bands.md"]
    assert restricted
    before = len(service.store.list())
    body = _feedback(f"What is the {SECRET_WORDS}?", restricted[:1], "a correction")
    assert _post(service, "/v1/feedback", body, None).status_code == 401
    refused = _post(service, "/v1/feedback", body, "public")
    assert refused.status_code == 400 and "not readable by you" in refused.text
    missing = _post(service, "/v1/feedback", _feedback("q?", [str(uuid.uuid4())]), "hr")
    assert missing.status_code == 400
    assert _post(service, "/v1/feedback", {**body, "groups": ["hr"]}, "public").status_code == 400
    assert len(service.store.list()) == before  # nothing stored by any refused request


def test_reviewed_corrections_are_exported_to_the_training_drop_where_validation_refuses_pii(
    service: Service,
) -> None:
    from pipelines.behaviour.base_model import load_tokenizer, resolve_base_model
    from pipelines.behaviour.validation import DataLimits, validate_training_data

    hit = next(h for h in _hits(service, "public", "supply chain") if h["doc_id"] != "salary-bands.md")
    sentence = next(s for s in re.split(r"(?<=[.!?])\s+", hit["text"]) if len(s.split()) >= 8)
    secret = [h for h in _hits(service, "hr", SECRET_WORDS) if h["doc_id"] == "salary-bands.md"][0]
    ids = {}
    for name, caller, chunk, correction in (
        ("clean", "public", hit["chunk_id"], sentence),
        ("pii", "public", hit["chunk_id"], f"{sentence} Call the author, SSN {SSN}."),
        ("restricted", "hr", secret["chunk_id"], f"The {SECRET_WORDS} is grommet7."),
        ("unreviewed", "public", hit["chunk_id"], sentence + " Unreviewed."),
    ):
        reply = _post(
            service, "/v1/feedback", _feedback(f"What does the report say ({name})?", [chunk], correction), caller
        )
        assert reply.status_code == 200, reply.text
        ids[name] = reply.json()["id"]
    stored = service.store.get(ids["pii"])
    assert stored.subject.endswith(":public") and stored.model_version == "3" and not stored.reviewed
    assert stored.citations[0].text == hit["text"]  # the indexed text, read by the server
    assert service.keys["public"] not in repr(stored)  # the subject, never the token

    for name in ("clean", "pii", "restricted"):
        reviewed = pipelines_cli(service.settings, "feedback", "review", str(ids[name]))
        assert reviewed.returncode == 0, reviewed.stderr
    exported = pipelines_cli(service.settings, "feedback", "export")
    assert exported.returncode == 0, exported.stderr
    assert f"held back feedback {ids['restricted']}: cites restricted documents" in exported.stderr

    drop = service.settings.training_drop_dir
    records = read_records(drop / TRAIN_FILE)
    shipped = read_records(service.settings.training_data_dir / TRAIN_FILE)
    assert (drop / f"{TRAIN_FILE}.done").exists()
    assert [r.id for r in records[: len(shipped)]] == [r.id for r in shipped]
    assert sorted(r.id for r in records[len(shipped) :]) == sorted(f"feedback-{ids[n]}" for n in ("clean", "pii"))
    assert export_corrections(service.store, service.settings).exported == [ids["clean"], ids["pii"]]
    assert len(read_records(drop / TRAIN_FILE)) == len(records)  # exporting again adds nothing twice

    # The drop goes through the training-data gate unchanged: the PII record is refused, the clean one is not.
    current = load_training_data(service.settings.training_data_dir)
    tokenizer = load_tokenizer(resolve_base_model(service.settings))
    limits = DataLimits(pii_patterns=tuple(service.settings.pii_patterns))
    report = validate_training_data(TrainingData(records, current.eval, current.ood), tokenizer, limits)
    assert not report.passed
    pii = [f for f in report.failures if f.reason == "contains PII or a secret"]
    assert pii and f"feedback-{ids['pii']}" in pii[0].examples
    assert f"feedback-{ids['clean']}" not in pii[0].examples


def test_a_correction_citing_a_document_restricted_since_is_held_back_at_export(
    service: Service, embedder: Embedder
) -> None:
    # Runs last in this module: it restricts one report. The feedback was given while the report was public.
    rows = sample_reports(4)
    target = rows[0]
    hit = next(h for h in _hits(service, "public", target["title"]) if h["doc_id"] == target["_id"])
    sentence = next(s for s in re.split(r"(?<=[.!?])\s+", hit["text"]) if len(s.split()) >= 8)
    body = _feedback("What did that report find?", [hit["chunk_id"]], sentence)
    reply = _post(service, "/v1/feedback", body, "public")
    assert reply.status_code == 200, reply.text
    feedback_id = reply.json()["id"]
    assert service.store.get(feedback_id).citations[0].acl == ("public",)
    assert pipelines_cli(service.settings, "feedback", "review", str(feedback_id)).returncode == 0
    # The owner restricts the report to hr before anyone exports.
    write_reports(service.settings.data_dir / "documents", [{**target, "acl": ["hr"]}, *rows[1:]])
    assert run_reindex(service.settings, embedder=embedder, allow_mass_change=True).accepted

    report = export_corrections(service.store, service.settings)
    assert feedback_id not in report.exported
    assert "no longer served" in report.held_back[feedback_id] and target["_id"] in report.held_back[feedback_id]
    shipped = read_records(service.settings.training_drop_dir / TRAIN_FILE)
    assert not any(r.id == f"feedback-{feedback_id}" for r in shipped)
