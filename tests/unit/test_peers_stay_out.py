"""Benchmark peers (the `bench` extra: LangChain's indexing API, LlamaIndex, TRL) stay out of the product.

`langchain-text-splitters` is a product dependency (the chunker's recursive splitter) and brings
`langchain_core` with it: both are allowed. Everything else from LangChain, LlamaIndex and TRL is a
benchmark peer only: neither the `pipelines` package nor a DAG file may import it, at module level
(checked in a fresh interpreter) or inside a function (checked in the source).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("langchain", "langchain_classic", "langchain_community", "langchain_weaviate", "llama_index", "trl")
ALLOWED = ("langchain_text_splitters", "langchain_core")  # the chunker's splitter and what it needs
# Imported by the probe after the product, to show it would see a peer: a standard-library module the product
# never loads, because the peers themselves are installed only with the `bench` extra (CI does not install it).
CANARY = "tabnanny"

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from pathlib import Path

    import pipelines
    for info in pkgutil.walk_packages(pipelines.__path__, "pipelines."):
        importlib.import_module(info.name)
    from airflow.dag_processing.dagbag import DagBag
    for path in sorted(Path("dags").glob("*.py")):
        bag = DagBag(dag_folder=str(path))
        assert not bag.import_errors, bag.import_errors
    # The chunker's long-paragraph path loads the allowed splitter.
    from pipelines.knowledge.chunking import _splitter
    from pipelines.knowledge.reindex import chunker_config
    from pipelines.settings import get_settings
    _splitter(chunker_config(get_settings()))
    print(json.dumps(sorted(sys.modules)))
    importlib.import_module(sys.argv[1])  # stands in for a peer, to show the probe would see one
    print(json.dumps(sorted(sys.modules)))
    """
)


def test_product_and_dags_load_no_benchmark_peer() -> None:
    """Import every `pipelines` module and parse every DAG in a fresh interpreter; no peer may be loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, CANARY], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    product, with_a_peer = (set(json.loads(line)) for line in done.stdout.strip().splitlines()[-2:])
    assert "langchain_text_splitters" in product  # the probe really loaded the chunker's splitter
    assert CANARY not in product
    assert _peers_in(product) == []
    assert CANARY in _peers_in(with_a_peer, (*PEERS, CANARY.split(".")[0]))  # it sees a module imported late


def _peers_in(modules: set[str], peers: tuple[str, ...] = PEERS) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in peers)


def test_no_product_source_imports_a_peer_even_lazily() -> None:
    offenders = []
    for path in sorted([*ROOT.joinpath("pipelines").rglob("*.py"), *ROOT.joinpath("dags").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PEERS]
    assert offenders == []
