"""A larger or GPU base model is configuration only (issue 14 item 7): device and dtype are settings.

BASE_MODEL_GGUF goes through `dequantise_gguf`, the same code that turns the bundled GGUF into the default
base model on every fresh machine; dequantising a second copy here would cost minutes of CI.
"""

from __future__ import annotations

import pytest

from pipelines.behaviour.base_model import load_model, resolve_base_model, torch_dtype
from pipelines.settings import Settings


def test_device_and_dtype_come_from_the_settings(settings: Settings) -> None:
    import torch

    pinned = settings.model_copy(update={"model_device": "cpu", "model_dtype": "bfloat16"})
    base = resolve_base_model(pinned)
    assert (base.device, base.dtype) == ("cpu", "bfloat16")
    model = load_model(base)
    parameter = next(model.parameters())
    assert parameter.device.type == "cpu" and parameter.dtype == torch.bfloat16


def test_auto_dtype_is_bfloat16_on_a_gpu_and_float32_on_cpu() -> None:
    import torch

    assert torch_dtype("auto", "cuda") == torch.bfloat16 and torch_dtype("auto", "cuda:1") == torch.bfloat16
    assert torch_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="MODEL_DTYPE"):
        torch_dtype("fp8", "cuda")
