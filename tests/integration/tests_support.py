"""Building small document sets for the re-indexing tests."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "documents" / "business-reports.jsonl"


def sample_reports(n: int) -> list[dict]:
    rows = [json.loads(line) for line in SAMPLE.read_text().split("\n") if line.strip()]
    return rows[:n]


def write_reports(documents_dir: Path, rows: list[dict], name: str = "reports.jsonl") -> None:
    documents_dir.mkdir(parents=True, exist_ok=True)
    with (documents_dir / name).open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
