"""Loading documents from a folder or any fsspec URL.

Supported: `.md` (optional YAML front matter), `.txt`, `.html`, `.pdf` and
BEIR-style `.jsonl` (one document per line). Each document gets a stable id: the
path relative to the location, or `_id` for JSONL rows. Files of other types are
loaded as empty documents with their type, so validation quarantines them with a
reason instead of dropping them silently; files that cannot be parsed at all are
reported as `LoadProblem`s.

ACLs are data. `parse_acl` is the one reading of an ACL value for every format
(front matter, `<meta name="acl">`, a JSONL row's `acl`, a `<file>.meta.yaml`
sidecar, a folder's `.acl` file); a string is split on commas everywhere. Where the
document says nothing, its sidecar, then the nearest folder `.acl`, then
`DOCUMENTS_WITHOUT_ACL` decide. Anything that cannot be read as a list of valid
group names sets `acl_problem` (validation quarantines the document); it never
becomes public by accident.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pipelines.settings import Settings

SUPPORTED_TYPES = ("md", "txt", "html", "pdf", "jsonl")
PUBLIC = "public"
ACL_KEY = "acl"
SIDECAR_SUFFIX = ".meta.yaml"  # `report.pdf.meta.yaml` describes `report.pdf`
FOLDER_ACL_FILE = ".acl"  # default ACL of every document in its folder and below
WITHOUT_ACL_QUARANTINE = "quarantine"
DEFAULT_ACL_GROUP_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


@dataclass(frozen=True)
class Document:
    """One source document, as validated and indexed.

    When `acl_problem` is set the document is quarantined; `acl` then holds the groups it
    would have had (possibly none), so a planner can still apply a stricter ACL.
    """

    id: str
    title: str
    text: str
    file_type: str
    acl: tuple[str, ...] = (PUBLIC,)
    source_url: str = ""
    encoding_valid: bool = True
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    acl_problem: str = ""
    # (lead's field, keep) The file this document came from, relative to the location: a JSONL file holds
    # many documents, and if that file cannot be read tomorrow every document it held must be kept, not deleted.
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
    source: str = ""  # (lead's field, keep) the file it belongs to; a JSONL row's `path` is `file:line`


@dataclass(frozen=True)
class AclPolicy:
    """What a valid ACL looks like, and what a document without one gets."""

    group_pattern: str = DEFAULT_ACL_GROUP_PATTERN
    known_groups: frozenset[str] = frozenset()  # empty: any group matching the pattern
    without_acl: str = PUBLIC  # `public`, `quarantine` or a group name


@dataclass(frozen=True)
class LoadOptions:
    """ACL policy and the caps that keep one bad file cheap."""

    acl: AclPolicy = AclPolicy()
    max_file_bytes: int = 100 * 2**20
    max_front_matter_bytes: int = 64 * 2**10
    pdf_max_pages: int = 500
    pdf_max_seconds: float = 30.0


def split_groups(value: str) -> list[str]:
    """Group names from a comma- or newline-separated string (as every format writes them)."""
    return [part.strip() for part in re.split(r"[,\n]", value)]


def load_options(settings: Settings) -> LoadOptions:
    """Loader options from the project settings."""
    known = frozenset(g for g in split_groups(settings.known_groups) if g)
    policy = AclPolicy(settings.acl_group_pattern, known, settings.documents_without_acl.strip())
    return LoadOptions(
        policy,
        settings.max_document_bytes,
        settings.max_front_matter_bytes,
        settings.pdf_max_pages,
        settings.pdf_max_seconds,
    )


@dataclass(frozen=True)
class Acl:
    """An ACL as read: its groups, and what is wrong with it (empty when valid)."""

    groups: tuple[str, ...]
    problem: str = ""


def parse_acl(value: Any, policy: AclPolicy) -> Acl:
    """Read one ACL value: a list of group names, or one comma-separated string."""
    if isinstance(value, str):
        names = split_groups(value)
    elif isinstance(value, list | tuple):
        if not all(isinstance(v, str) for v in value):
            return Acl(tuple(sorted({str(v).strip() for v in value})), "ACL group names must be strings")
        names = [v.strip() for v in value]
    else:
        kind = "null" if value is None else type(value).__name__
        return Acl((), f"ACL must be a list of group names or a comma-separated string, not {kind}")
    groups = tuple(sorted({n for n in names if n}))
    if not groups:
        return Acl((), "ACL is empty (readable by no group); write `public` to mean everyone")
    if "" in names:
        return Acl(groups, "ACL has an empty group name")
    pattern = re.compile(policy.group_pattern)
    bad = [g for g in groups if g != PUBLIC and not pattern.search(g)]
    if bad:
        return Acl(groups, f"ACL group {', '.join(map(repr, bad))} does not match ACL_GROUP_PATTERN")
    unknown = [g for g in groups if policy.known_groups and g != PUBLIC and g not in policy.known_groups]
    if unknown:
        return Acl(groups, f"unknown ACL group {', '.join(map(repr, unknown))} (not in KNOWN_GROUPS)")
    return Acl(groups)


def acl_from_metadata(meta: Mapping[Any, Any], inherited: Acl, policy: AclPolicy) -> Acl:
    """The ACL a mapping of metadata gives; `inherited` when it has no `acl` key.

    A key that differs from `acl` only by case or spaces is a mistake, not "no ACL": it
    quarantines the document (with the groups it meant, for the planner).
    """
    keys = [k for k in meta if isinstance(k, str) and k.strip().lower() == ACL_KEY]
    if keys == [ACL_KEY]:
        return parse_acl(meta[ACL_KEY], policy)
    if keys:
        wrong = next(k for k in keys if k != ACL_KEY)
        meant = parse_acl(meta[wrong], policy).groups
        return Acl(meant, f"ACL key spelled {wrong!r}: only lower-case `acl` is read")
    return inherited


def without_acl(policy: AclPolicy) -> Acl:
    """What a document gets when nothing gives it an ACL (`DOCUMENTS_WITHOUT_ACL`)."""
    if policy.without_acl == WITHOUT_ACL_QUARANTINE:
        return Acl((), "no ACL (not in the document, a sidecar or a folder .acl) and DOCUMENTS_WITHOUT_ACL=quarantine")
    if policy.without_acl == PUBLIC:
        return Acl((PUBLIC,))
    return parse_acl([policy.without_acl], policy)


class DocumentUnreadable(ValueError):
    """A file that cannot be parsed; the message never quotes the file's content."""


class _StrictYamlLoader(yaml.SafeLoader):
    """Safe YAML without aliases (an alias bomb is refused at its first alias) or duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load_yaml_mapping(text: str, what: str, max_chars: int) -> dict[Any, Any]:
    """A YAML mapping (front matter, sidecar) under a size cap, without aliases."""
    if len(text) > max_chars:
        raise DocumentUnreadable(f"{what} is {len(text)} characters, over the {max_chars} cap")
    try:
        value = yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        # The error's own text quotes the offending line: keep only the problem and its position.
        line = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        raise DocumentUnreadable(f"{what}: {err.problem or err.context}{line}") from None
    except yaml.YAMLError as err:
        raise DocumentUnreadable(f"{what}: invalid YAML ({type(err).__name__})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DocumentUnreadable(f"{what} must be a mapping, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class FileContext:
    """What a file's surroundings say about it: the ACL it inherits and its sidecar."""

    inherited: Acl = Acl((PUBLIC,))
    sidecar: Mapping[str, Any] = field(default_factory=dict)
    options: LoadOptions = LoadOptions()


def _decode(raw: bytes) -> tuple[str, bool]:
    # `utf-8-sig` drops a leading byte-order mark (Windows editors write one): kept, it would hide
    # a Markdown file's front matter, and with it the file's own ACL.
    try:
        return raw.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace"), False


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_OPENS_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n")


def parse_markdown(doc_id: str, raw: bytes, context: FileContext = FileContext()) -> Document:
    """Markdown with optional YAML front matter (title, acl, source_url, ...)."""
    text, ok = _decode(raw)
    meta: dict[str, Any] = {}
    match = _FRONT_MATTER.match(text)
    if match:
        meta = load_yaml_mapping(match.group(1), "front matter", context.options.max_front_matter_bytes)
        text = text[match.end() :]
    acl = acl_from_metadata(meta, context.inherited, context.options.acl)
    if not match and _OPENS_FRONT_MATTER.match(text):
        # Front matter that never closes may hold an ACL we cannot read: quarantined with no groups
        # (stricter than any), never indexed under the folder's or the default ACL.
        acl = Acl((), "front matter opened with `---` is never closed: its ACL cannot be read")
    meta = {k: v for k, v in meta.items() if not (isinstance(k, str) and k.strip().lower() == ACL_KEY)}
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    title = str(meta.pop("title", "") or (heading.group(1).strip() if heading else PurePosixPath(doc_id).stem))
    source_url = str(meta.pop("source_url", "") or context.sidecar.get("source_url", ""))
    return Document(doc_id, title, text.strip(), "md", acl.groups, source_url, ok, meta, acl.problem)


def parse_text(doc_id: str, raw: bytes, context: FileContext = FileContext()) -> Document:
    """Plain text; title, ACL and source URL come from the sidecar or the folder."""
    text, ok = _decode(raw)
    title = str(context.sidecar.get("title") or PurePosixPath(doc_id).stem)
    acl = context.inherited
    source_url = str(context.sidecar.get("source_url") or "")
    return Document(doc_id, title, text.strip(), "txt", acl.groups, source_url, ok, acl_problem=acl.problem)


def parse_html(doc_id: str, raw: bytes, context: FileContext = FileContext()) -> Document:
    """Main text of an HTML page; `<meta name="acl">` and canonical link are honoured."""
    from bs4 import BeautifulSoup

    decoded, ok = _decode(raw)
    soup = BeautifulSoup(decoded, "html.parser")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else PurePosixPath(doc_id).stem
    acl_tags = [t for t in soup.find_all("meta") if str(t.get("name", "")).strip().lower() == ACL_KEY]
    if len(acl_tags) > 1:
        acl = Acl((), 'ACL given by more than one <meta name="acl"> tag')
    else:
        meta = {str(t.get("name")): str(t.get("content", "")) for t in acl_tags}
        acl = acl_from_metadata(meta, context.inherited, context.options.acl)
    canonical = soup.find("link", attrs={"rel": "canonical"})
    source_url = str(canonical.get("href", "")) if canonical else ""
    body = soup.body or soup
    visible = re.sub(r"\n\s*\n+", "\n\n", body.get_text("\n")).strip()
    text = main_content(decoded) or visible
    return Document(doc_id, title, text, "html", acl.groups, source_url, ok, acl_problem=acl.problem)


def main_content(html: str) -> str:
    """The page's main text as markdown (navigation, cookie banners, share bars, footers left out).

    trafilatura's extractor, offline. Empty when it finds no main content (a tiny or odd page): the
    caller then keeps all visible text rather than lose the page; shared chrome left in it is cut
    later across documents (`pipelines.knowledge.boilerplate`).
    """
    import trafilatura

    extracted = trafilatura.extract(html, output_format="markdown", include_comments=False, include_tables=True)
    return (extracted or "").strip()


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[Callable[[], None]]:
    """Interrupt the block after `seconds` (SIGALRM in the main thread); yields a checkpoint.

    The checkpoint raises once the time is up, for threads where no signal can be used. An
    outer timer (Airflow's execution_timeout uses SIGALRM too) is restored afterwards.
    """
    deadline = time.monotonic() + seconds

    def checkpoint() -> None:
        if time.monotonic() > deadline:
            raise DocumentUnreadable(f"{what} took longer than {seconds:g} s")

    if threading.current_thread() is not threading.main_thread():
        yield checkpoint
        return

    def expired(signum: int, frame: Any) -> None:
        raise DocumentUnreadable(f"{what} took longer than {seconds:g} s")

    outer_delay, _ = signal.getitimer(signal.ITIMER_REAL)
    previous = signal.signal(signal.SIGALRM, expired)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_delay) if outer_delay else seconds)
    try:
        yield checkpoint
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - started), 0.001))


def parse_pdf(doc_id: str, raw: bytes, context: FileContext = FileContext()) -> Document:
    """Text of every page, via pypdf, under a page cap and a time cap."""
    from pypdf import PdfReader

    options = context.options
    with time_limit(options.pdf_max_seconds, "PDF text extraction") as checkpoint:
        reader = PdfReader(io.BytesIO(raw))
        if len(reader.pages) > options.pdf_max_pages:
            raise DocumentUnreadable(f"PDF has {len(reader.pages)} pages, over the {options.pdf_max_pages} cap")
        pages = []
        for page in reader.pages:
            checkpoint()
            pages.append((page.extract_text() or "").strip())
        text = "\n\n".join(pages).strip()
        info_title = (reader.metadata.title if reader.metadata else None) or PurePosixPath(doc_id).stem
    title = str(context.sidecar.get("title") or info_title)
    acl = context.inherited
    source_url = str(context.sidecar.get("source_url") or "")
    return Document(doc_id, title, text, "pdf", acl.groups, source_url, acl_problem=acl.problem)


def parse_jsonl(path: str, raw: bytes, context: FileContext = FileContext()) -> Iterator[Document | LoadProblem]:
    """BEIR-style rows: `_id`, `title`, `text`, optional `acl`, `source_url`, `metadata`."""
    text, ok = _decode(raw)
    # split("\n"), not splitlines(): report text may hold U+2028, which JSON leaves unescaped.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc_id = str(row["_id"])
            metadata = dict(row.get("metadata") or {})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            yield LoadProblem(f"{path}:{n}", f"unreadable JSONL row: {type(err).__name__}")
            continue
        acl = acl_from_metadata(row, context.inherited, context.options.acl)
        yield Document(
            doc_id,
            str(row.get("title") or doc_id),
            str(row.get("text") or "").strip(),
            "jsonl",
            acl.groups,
            str(row.get("source_url") or ""),
            ok,
            metadata,
            acl.problem,
        )


PARSERS = {"md": parse_markdown, "txt": parse_text, "html": parse_html, "pdf": parse_pdf}


def _safe_reason(err: Exception) -> str:
    """A load problem's reason: ours verbatim, a library's clipped (it may quote bytes of the file)."""
    if isinstance(err, DocumentUnreadable):
        return str(err)
    return f"{type(err).__name__}: {str(err)[:160]}"


class _Surroundings:
    """Sidecars and folder `.acl` files of one location, read once each."""

    def __init__(self, fs: Any, root: str, paths: set[str], options: LoadOptions) -> None:
        self.fs, self.root, self.paths, self.options = fs, PurePosixPath(root), paths, options
        self._folder: dict[PurePosixPath, Acl] = {}

    def _read(self, path: str) -> str:
        size = int(self.fs.size(path))
        if size > self.options.max_front_matter_bytes:
            raise DocumentUnreadable(f"{size} bytes, over the {self.options.max_front_matter_bytes} cap")
        raw = self.fs.cat_file(path)
        try:
            return str(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DocumentUnreadable("not valid UTF-8") from None

    def folder_acl(self, folder: PurePosixPath) -> Acl:
        """The nearest `.acl` at or above `folder` (within the location), else the policy's default."""
        if folder not in self._folder:
            path = folder / FOLDER_ACL_FILE
            if str(path) in self.paths:
                try:
                    lines = [ln for ln in self._read(str(path)).split("\n") if not ln.strip().startswith("#")]
                    found = parse_acl(",".join(lines), self.options.acl)
                    if found.problem:
                        found = Acl(found.groups, f"{path.relative_to(self.root)}: {found.problem}")
                except DocumentUnreadable as err:
                    found = Acl((), f"{path.relative_to(self.root)} unreadable: {err}")
            elif folder == self.root or self.root not in folder.parents:
                found = without_acl(self.options.acl)
            else:
                found = self.folder_acl(folder.parent)
            self._folder[folder] = found
        return self._folder[folder]

    def context(self, path: str) -> FileContext:
        """Inherited ACL and sidecar of one document file."""
        inherited = self.folder_acl(PurePosixPath(path).parent)
        sidecar: dict[Any, Any] = {}
        sidecar_path = path + SIDECAR_SUFFIX
        if sidecar_path in self.paths:
            name = PurePosixPath(sidecar_path).name
            try:
                cap = self.options.max_front_matter_bytes
                sidecar = load_yaml_mapping(self._read(sidecar_path), f"sidecar {name}", cap)
                inherited = acl_from_metadata(sidecar, inherited, self.options.acl)
            except DocumentUnreadable as err:
                inherited = Acl((), f"sidecar {name} unreadable: {err}")
        return FileContext(inherited, sidecar, self.options)


def _list_files(fs: Any, root: str) -> tuple[list[str], list[tuple[str, OSError]]]:
    """Every file under `root`, and each folder that could not be listed with its error.

    Not `fs.find`: its walk leaves out a sub-folder it cannot list (`on_error` reaches only the top
    folder in fsspec 2026.9), and a folder left out would read as its documents deleted.
    """
    files: list[str] = []
    unlisted: list[tuple[str, OSError]] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            listing = fs.ls(folder, detail=True)
        except OSError as err:
            unlisted.append((folder, err))
            continue
        for info in listing:
            name = str(info["name"]).rstrip("/")
            if name == folder.rstrip("/"):
                files.append(name)  # `root` is a file itself
            elif info["type"] == "directory":
                pending.append(name)
            else:
                files.append(name)
    return sorted(files), unlisted


def _relative_folder(path: str, root: str) -> str:
    """`path` under `root` as a folder source (`sub/`); the whole corpus (`/`) when it cannot be placed."""
    try:
        rel = str(PurePosixPath(path).relative_to(PurePosixPath(root)))
    except ValueError:
        return "/"
    return "/" if rel in ("", ".") else rel.rstrip("/") + "/"


def load_documents(location: str, options: LoadOptions = LoadOptions()) -> tuple[list[Document], list[LoadProblem]]:
    """Every document under `location` (a path or fsspec URL), plus what could not be read."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    documents: list[Document] = []
    problems: list[LoadProblem] = []
    if not fs.exists(root):
        return documents, [LoadProblem(location, "documents location does not exist")]
    paths, unlisted = _list_files(fs, root)
    for folder_path, err in unlisted:
        # The folder's source: the documents indexed from under it are kept, never deleted.
        folder = _relative_folder(folder_path, root)
        problems.append(LoadProblem(folder, f"folder unreadable: {type(err).__name__}", source=folder))
    surroundings = _Surroundings(fs, root, set(paths), options)
    for path in paths:
        rel = str(PurePosixPath(path).relative_to(PurePosixPath(root)))
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue  # hidden files: drop markers, editor swap files, folder `.acl`
        if rel.endswith(SIDECAR_SUFFIX):
            continue  # read with the document it describes
        suffix = PurePosixPath(rel).suffix.lower().lstrip(".")
        try:
            size = int(fs.size(path))
            if size > options.max_file_bytes:
                raise DocumentUnreadable(f"file is {size} bytes, over MAX_DOCUMENT_BYTES ({options.max_file_bytes})")
            context = surroundings.context(path)
            raw = fs.cat_file(path)
            if suffix == "jsonl":
                for item in parse_jsonl(rel, raw, context):
                    if isinstance(item, Document):
                        documents.append(dataclasses.replace(item, source=rel))
                    else:
                        problems.append(dataclasses.replace(item, source=rel))
            elif suffix in PARSERS:
                documents.append(dataclasses.replace(PARSERS[suffix](rel, raw, context), source=rel))
            else:
                documents.append(
                    Document(
                        rel,
                        PurePosixPath(rel).stem,
                        "",
                        suffix or "none",
                        context.inherited.groups,
                        acl_problem=context.inherited.problem,
                        source=rel,
                    )
                )
        except Exception as err:  # noqa: BLE001 - any parser failure is reported, never fatal
            problems.append(LoadProblem(rel, _safe_reason(err), source=rel))
    return documents, problems
