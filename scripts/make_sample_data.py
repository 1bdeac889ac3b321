"""Build the tracked sample under data/ from the shared business-reports set.

Run once by a maintainer (the output is versioned with DVC, see data.dvc):
    python scripts/make_sample_data.py ../shared/datasets/business-reports

- data/documents/business-reports.jsonl: the 42 whole reports, rebuilt from their
  chunks (the pipeline does its own chunking);
- data/golden/queries.jsonl + qrels.tsv: the 50 queries with the corrected
  report-level judgements (the upstream chunk qrels are scrambled);
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rebuild_reports(corpus: Path) -> list[dict[str, str]]:
    """Group `<report>_chunk_<n>` rows back into whole reports, in chunk order."""
    parts: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for line in corpus.read_text().splitlines():
        row = json.loads(line)
        report, marker, n = row["_id"].rpartition("_chunk_")
        if not marker:  # single-chunk reports carry the bare report id
            report, n = row["_id"], "0"
        parts[report].append((int(n), row["title"], row["text"].strip()))
    reports = []
    for report, rows in sorted(parts.items()):
        rows.sort()
        title = re.sub(r"\s*\(Part \d+/\d+\)$", "", rows[0][1])
        text = "\n\n".join(text for _, _, text in rows)
        reports.append({"_id": report, "title": title, "text": text, "source_url": f"beir://business-reports/{report}"})
    return reports


def main(source: Path) -> None:
    data = ROOT / "data"
    documents = data / "documents"
    golden = data / "golden"
    documents.mkdir(parents=True, exist_ok=True)
    golden.mkdir(parents=True, exist_ok=True)
    reports = rebuild_reports(source / "corpus.jsonl")
    with (documents / "business-reports.jsonl").open("w") as out:
        for report in reports:
            out.write(json.dumps(report, ensure_ascii=False) + "\n")
    shutil.copyfile(source / "queries.jsonl", golden / "queries.jsonl")
    shutil.copyfile(source / "qrels" / "reports.tsv", golden / "qrels.tsv")
    from pipelines.behaviour.dataset import write_training_sample

    write_training_sample(source, data / "training")
    print(f"wrote {len(reports)} reports, golden set and training sample under {data}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "datasets" / "business-reports")
