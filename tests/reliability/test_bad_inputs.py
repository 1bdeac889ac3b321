"""A corpus of bad inputs: every bad file is quarantined with its reason, every good document is indexed.

Memory stays bounded on any single bad file: the loader and validation are measured with
tracemalloc (Python allocations) and the whole run with the process's peak RSS.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
import tracemalloc
from pathlib import Path

from tests_support import sample_reports, write_reports

from pipelines.knowledge import index as idx
from pipelines.knowledge.documents import Document, load_documents, load_options
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.knowledge.validation import validate_documents, validation_limits
from pipelines.settings import Settings

log = logging.getLogger(__name__)
N_REPORTS = 10
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)
# bad file -> (expectation, words its reason must hold)
EXPECTED = {
    "empty.md": ("expect_column_values_to_be_between", "text empty, too short or too long"),
    "random.md": ("expect_column_values_to_be_in_set", "text is not valid UTF-8"),
    "latin1.txt": ("expect_column_values_to_be_in_set", "text is not valid UTF-8"),
    "corrupt.pdf": ("readable", "Pdf"),  # PdfReadError or PdfStreamError, by where the bytes break
    "huge.txt": ("expect_column_values_to_be_between", "text empty, too short or too long"),
    "bomb.md": ("readable", "YAML aliases are not allowed"),
    "tool.exe": ("expect_column_values_to_be_in_set", "unexpected file type"),
    "rows.jsonl:2": ("readable", "unreadable JSONL row"),
    "rows.jsonl:3": ("readable", "unreadable JSONL row"),
    "rows.jsonl:4": ("readable", "unreadable JSONL row"),
}


def _pdf(path: Path, text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["pdf.fonttype"] = 42
    fig = plt.figure()
    fig.text(0.1, 0.5, text)
    fig.savefig(path)
    plt.close(fig)


def _write_corpus(documents: Path) -> set[str]:
    """Good and bad files side by side; returns the ids of the good documents."""
    reports = sample_reports(N_REPORTS)
    write_reports(documents, reports)
    (documents / "guide.md").write_text("# Travel guide\n\nBook economy class for every flight under six hours.")
    (documents / "notes.txt").write_text("Quarterly notes: margins rose in the north and fell in the south.")
    (documents / "page.html").write_text(
        "<html><head><title>Pricing</title></head><body><p>Prices rise in May "
        "for every product line of the company.</p></body></html>"
    )
    _pdf(documents / "memo.pdf", "Quarterly memo about margins and the outlook for next year")
    (documents / "rows.jsonl").write_text(
        json.dumps({"_id": "row-good", "title": "Row", "text": "A good row among bad ones, long enough."}) + "\n"
        "{broken json\n" + json.dumps({"title": "no id"}) + "\n" + json.dumps([1, 2, 3]) + "\n"
    )
    # The bad ones.
    (documents / "empty.md").write_text("")
    (documents / "random.md").write_bytes(os.urandom(4096))
    (documents / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me, na\xefve r\xe9sum\xe9 of the quarter.".encode("latin-1"))
    (documents / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2048))
    (documents / "huge.txt").write_text("All work and no play. " * (15 * 2**20 // 22))
    (documents / "bomb.md").write_text(f"---\n{ALIAS_BOMB}\n---\n# Bomb\n\nA document whose front matter explodes.")
    (documents / "tool.exe").write_bytes(b"MZ\x90\x00" + os.urandom(1024))
    return {r["_id"] for r in reports} | {"guide.md", "notes.txt", "page.html", "memo.pdf", "row-good"}


def test_bad_inputs_are_quarantined_with_reasons_and_good_documents_indexed(
    kb: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    settings = kb.model_copy(update={"max_invalid_share": 0.6})
    documents = settings.data_dir / "documents"
    good = _write_corpus(documents)

    # Loading and validating the corpus: time and peak Python memory. GX is warmed up first, so its
    # one-off imports do not count as memory spent on the files.
    warm = Document("warm.md", "Warm", "A warm-up document, long enough to pass.", "md")
    validate_documents([warm], [], validation_limits(settings), tmp_path / "gx-warm")
    tracemalloc.start()
    started = time.perf_counter()
    loaded, problems = load_documents(str(documents), load_options(settings))
    validated = validate_documents(loaded, problems, validation_limits(settings), tmp_path / "gx")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = (
        f"bad-input corpus ({sum(p.stat().st_size for p in documents.iterdir()) / 2**20:.1f} MiB, "
        f"{len(loaded)} documents, {len(problems)} unreadable): load + validate {elapsed:.1f} s, "
        f"peak Python memory {peak / 2**20:.1f} MiB"
    )
    print(message)
    log.warning(message)
    assert set(validated.valid_ids) == good
    # A 15 MiB text is the largest file: holding it, its decoded copy and the frame stays well under 8x.
    assert peak < 120 * 2**20, f"peak {peak / 2**20:.0f} MiB"

    report = run_reindex(settings, embedder=embedder)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = f"peak RSS of the test process: {rss_before / 1024:.0f} MiB before the run, {rss_after / 1024:.0f} after"
    print(message)
    log.warning(message)
    assert report.accepted, report.summary()

    quarantine = json.loads((settings.quarantine_dir / f"{report.run_id}.json").read_text())["quarantine"]
    found: dict[str, list[tuple[str, str]]] = {}
    for record in quarantine:
        found.setdefault(record["document"], []).append((record["expectation"], record["reason"]))
    print("quarantine:", json.dumps(found, indent=1))
    for name, (expectation, reason) in EXPECTED.items():
        assert any(e == expectation and reason in r for e, r in found.get(name, [])), (name, found.get(name))
    assert set(found) == set(EXPECTED), f"quarantined beyond the bad files: {set(found) - set(EXPECTED)}"

    from weaviate.classes.query import Filter

    with idx.connect(settings) as client:
        target = client.collections.use(settings.collection_alias)
        indexed = {str(o.properties["doc_id"]) for o in target.iterator(return_properties=["doc_id"])}
        huge = target.query.fetch_objects(filters=Filter.by_property("doc_id").equal("huge.txt"), limit=1)
    assert indexed == good
    assert not huge.objects
