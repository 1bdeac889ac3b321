"""Loading every supported format, and reporting what cannot be read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.knowledge.documents import load_documents

ROOT = Path(__file__).resolve().parents[2]


def _pdf(path: Path, text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["pdf.fonttype"] = 42
    fig = plt.figure()
    fig.text(0.1, 0.5, text)
    fig.savefig(path)
    plt.close(fig)


def test_loads_every_supported_format(tmp_path: Path) -> None:
    (tmp_path / "policy.md").write_text(
        "---\nacl: [finance, legal]\nsource_url: https://wiki/policy\n---\n# Travel policy\n\nBook economy."
    )
    (tmp_path / "notes.txt").write_text("Plain notes about the quarter.")
    (tmp_path / "page.html").write_text(
        '<html><head><title>Pricing</title><meta name="acl" content="sales"></head>'
        "<body><script>x=1</script><p>Prices rise in May.</p></body></html>"
    )
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"_id": "r1", "title": "Row", "text": "Row text", "acl": ["hr"]}) + "\n"
    )
    _pdf(tmp_path / "memo.pdf", "Quarterly memo about margins")
    docs, problems = load_documents(str(tmp_path))
    by_id = {d.id: d for d in docs}
    assert not problems
    assert by_id["policy.md"].title == "Travel policy" and by_id["policy.md"].acl == ("finance", "legal")
    assert by_id["policy.md"].source_url == "https://wiki/policy"
    assert by_id["notes.txt"].acl == ("public",)
    assert by_id["page.html"].title == "Pricing" and "x=1" not in by_id["page.html"].text
    assert by_id["page.html"].acl == ("sales",)
    assert by_id["r1"].acl == ("hr",)
    assert "margins" in by_id["memo.pdf"].text


def test_unreadable_files_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine text here")
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf at all")
    (tmp_path / "rows.jsonl").write_text('{"_id": "ok", "text": "t"}\n{broken json\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "tool.exe").write_bytes(b"MZ")
    docs, problems = load_documents(str(tmp_path))
    assert {p.path for p in problems} == {"broken.pdf", "rows.jsonl:2"}
    by_id = {d.id: d for d in docs}
    assert by_id["latin1.txt"].encoding_valid is False
    assert by_id["tool.exe"].file_type == "exe" and by_id["tool.exe"].text == ""
    assert "ok" in by_id and "good.txt" in by_id


def test_missing_location_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    docs, problems = load_documents(str(tmp_path / "nope"))
    assert docs == [] and problems[0].reason == "documents location does not exist"


def test_a_folder_that_cannot_be_listed_is_a_problem_with_the_folder_as_source() -> None:
    """A real permission error: the folder is closed to the loader (which runs as nobody: root reads anything)."""
    corpus = Path(tempfile.mkdtemp(prefix="unlisted-"))
    try:
        corpus.chmod(0o755)
        (corpus / "open.md").write_text("# Open\n\nReadable by anyone.")
        (corpus / "hr").mkdir()
        (corpus / "hr" / "a.md").write_text("# Reviews\n\nOnly the owner may list this folder.")
        (corpus / "hr").chmod(0o700 if os.geteuid() == 0 else 0o000)
        script = (
            "import json, os, sys\n"
            "import encodings.utf_8_sig, fsspec.implementations.local\n"
            "from pipelines.knowledge.documents import load_documents\n"
            "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)  # after imports: root's home is shut\n"
            "docs, problems = load_documents(sys.argv[1])\n"
            "print(json.dumps({'docs': [d.id for d in docs], 'problems': [[p.source, p.reason] for p in problems]}))\n"
        )
        done = subprocess.run([sys.executable, "-c", script, str(corpus)], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        found = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        (corpus / "hr").chmod(0o700)
        shutil.rmtree(corpus)
    assert found["docs"] == ["open.md"]
    assert found["problems"] == [["hr/", "folder unreadable: PermissionError"]]
