"""Loading documents from a folder or any fsspec URL.

Supported: `.md` (optional YAML front matter), `.txt`, `.html`, `.pdf` and
BEIR-style `.jsonl` (one document per line). Each document gets a stable id: the
path relative to the location, or `_id` for JSONL rows. Files of other types are
loaded as empty documents with their type, so validation quarantines them with a
reason instead of dropping them silently; files that cannot be parsed at all are
reported as `LoadProblem`s.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import yaml

SUPPORTED_TYPES = ("md", "txt", "html", "pdf", "jsonl")
PUBLIC = "public"


@dataclass(frozen=True)
class Document:
    """One source document, as validated and indexed."""

    id: str
    title: str
    text: str
    file_type: str
    acl: tuple[str, ...] = (PUBLIC,)
    source_url: str = ""
    encoding_valid: bool = True
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The file this document came from (relative to the location): a JSONL file holds many documents,
    # and if that file cannot be read tomorrow, every document it held must be kept, not deleted.
    source: str = ""

    @property
    def content_hash(self) -> str:
        """Hash of everything that ends up in the index for this document."""
        payload = json.dumps([self.title, self.text, list(self.acl), self.source_url], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class LoadProblem:
    """A file (or JSONL line) that could not be read at all."""

    path: str
    reason: str
    source: str = ""  # the file it belongs to (a JSONL row's problem names the row, `file:line`)


def _acl(value: Any) -> tuple[str, ...]:
    if not value:
        return (PUBLIC,)
    groups = [value] if isinstance(value, str) else list(value)
    return tuple(sorted({str(g).strip() for g in groups if str(g).strip()})) or (PUBLIC,)


def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def parse_markdown(doc_id: str, raw: bytes) -> Document:
    """Markdown with optional YAML front matter (title, acl, source_url, ...)."""
    text, ok = _decode(raw)
    meta: dict[str, Any] = {}
    match = _FRONT_MATTER.match(text)
    if match:
        meta = yaml.safe_load(match.group(1)) or {}
        text = text[match.end() :]
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    title = str(meta.pop("title", "") or (heading.group(1).strip() if heading else PurePosixPath(doc_id).stem))
    return Document(
        doc_id, title, text.strip(), "md", _acl(meta.pop("acl", None)), str(meta.pop("source_url", "")), ok, meta
    )


def parse_text(doc_id: str, raw: bytes) -> Document:
    text, ok = _decode(raw)
    return Document(doc_id, PurePosixPath(doc_id).stem, text.strip(), "txt", encoding_valid=ok)


def parse_html(doc_id: str, raw: bytes) -> Document:
    """Visible text of an HTML page; `<meta name="acl">` and canonical link are honoured."""
    from bs4 import BeautifulSoup

    decoded, ok = _decode(raw)
    soup = BeautifulSoup(decoded, "html.parser")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else PurePosixPath(doc_id).stem
    acl_tag = soup.find("meta", attrs={"name": "acl"})
    acl = str(acl_tag.get("content", "")).split(",") if acl_tag else None
    canonical = soup.find("link", attrs={"rel": "canonical"})
    source_url = str(canonical.get("href", "")) if canonical else ""
    body = soup.body or soup
    text = re.sub(r"\n\s*\n+", "\n\n", body.get_text("\n")).strip()
    return Document(doc_id, title, text, "html", _acl(acl), source_url, ok)


def parse_pdf(doc_id: str, raw: bytes) -> Document:
    """Text of every page, via pypdf."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(raw))
    text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    info_title = (reader.metadata.title if reader.metadata else None) or PurePosixPath(doc_id).stem
    return Document(doc_id, str(info_title), text, "pdf")


def parse_jsonl(path: str, raw: bytes) -> Iterator[Document | LoadProblem]:
    """BEIR-style rows: `_id`, `title`, `text`, optional `acl`, `source_url`, `metadata`."""
    text, ok = _decode(raw)
    # split("\n"), not splitlines(): report text may hold U+2028, which JSON leaves unescaped.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc_id = str(row["_id"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            yield LoadProblem(f"{path}:{n}", f"unreadable JSONL row: {err!r}")
            continue
        yield Document(
            doc_id,
            str(row.get("title") or doc_id),
            str(row.get("text") or "").strip(),
            "jsonl",
            _acl(row.get("acl")),
            str(row.get("source_url") or ""),
            ok,
            dict(row.get("metadata") or {}),
        )


PARSERS = {"md": parse_markdown, "txt": parse_text, "html": parse_html, "pdf": parse_pdf}


def load_documents(location: str) -> tuple[list[Document], list[LoadProblem]]:
    """Every document under `location` (a path or fsspec URL), plus what could not be read."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    documents: list[Document] = []
    problems: list[LoadProblem] = []
    if not fs.exists(root):
        return documents, [LoadProblem(location, "documents location does not exist")]
    for path in sorted(fs.find(root)):
        rel = str(PurePosixPath(path).relative_to(PurePosixPath(root)))
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue  # hidden files: drop markers, editor swap files
        suffix = PurePosixPath(rel).suffix.lower().lstrip(".")
        try:
            raw = fs.cat_file(path)
            if suffix == "jsonl":
                for item in parse_jsonl(rel, raw):
                    if isinstance(item, Document):
                        documents.append(replace(item, source=rel))
                    else:
                        problems.append(replace(item, source=rel))
            elif suffix in PARSERS:
                documents.append(replace(PARSERS[suffix](rel, raw), source=rel))
            else:
                documents.append(Document(rel, PurePosixPath(rel).stem, "", suffix or "none", source=rel))
        except Exception as err:  # noqa: BLE001 - any parser failure is reported, never fatal
            problems.append(LoadProblem(rel, f"{type(err).__name__}: {err}", source=rel))
    return documents, problems
