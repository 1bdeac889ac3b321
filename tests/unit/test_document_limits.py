"""One bad file stays cheap: YAML without aliases, front matter, file, PDF page and time caps."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from pipelines.knowledge.documents import LoadOptions, load_documents

ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)


def _pdf(path: Path, pages: int) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    with path.open("wb") as out:
        writer.write(out)


def test_yaml_alias_bomb_in_front_matter_is_refused_cheaply(tmp_path: Path) -> None:
    (tmp_path / "bomb.md").write_text(f"---\n{ALIAS_BOMB}\nacl: [hr]\n---\n# Bomb\n\nBody text.")
    tracemalloc.start()
    started = time.perf_counter()
    docs, problems = load_documents(str(tmp_path))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert docs == [] and problems[0].path == "bomb.md"
    assert "YAML aliases are not allowed" in problems[0].reason
    assert elapsed < 2 and peak < 20 * 2**20, (elapsed, peak)


def test_duplicate_acl_keys_and_oversized_front_matter_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dup.md").write_text("---\nacl: [hr]\nacl: []\n---\nBody text.")
    (tmp_path / "big.md").write_text("---\ntitle: " + "x" * 70_000 + "\n---\nBody text.")
    problems = {p.path: p.reason for p in load_documents(str(tmp_path))[1]}
    assert "duplicate key 'acl'" in problems["dup.md"]
    assert "over the 65536 cap" in problems["big.md"]


def test_yaml_errors_do_not_quote_the_document(tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_text("---\ntitle: ok\nsecret line: [unclosed CONFIDENTIAL-PLAN\n---\nBody.")
    problems = load_documents(str(tmp_path))[1]
    assert problems and "CONFIDENTIAL-PLAN" not in problems[0].reason


def test_file_size_cap_is_checked_before_reading(tmp_path: Path) -> None:
    (tmp_path / "huge.txt").write_bytes(b"x" * 5000)
    problems = load_documents(str(tmp_path), LoadOptions(max_file_bytes=4096))[1]
    assert "over MAX_DOCUMENT_BYTES" in problems[0].reason


def test_pdf_page_cap(tmp_path: Path) -> None:
    _pdf(tmp_path / "long.pdf", 12)
    problems = load_documents(str(tmp_path), LoadOptions(pdf_max_pages=10))[1]
    assert problems[0].reason == "PDF has 12 pages, over the 10 cap"


def test_pdf_time_cap_interrupts_extraction(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pypdf

    _pdf(tmp_path / "slow.pdf", 3)

    def slow_page(self: object, *args: object, **kwargs: object) -> str:
        time.sleep(5)  # a page whose content stream takes pypdf forever
        return ""

    monkeypatch.setattr(pypdf.PageObject, "extract_text", slow_page)
    started = time.perf_counter()
    problems = load_documents(str(tmp_path), LoadOptions(pdf_max_seconds=0.5))[1]
    assert time.perf_counter() - started < 2
    assert problems[0].reason == "PDF text extraction took longer than 0.5 s"
