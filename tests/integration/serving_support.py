"""Helpers for the answering-service tests and bench: cheap registered adapters, no training run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests_support import settings_env

from pipelines.settings import Settings


def pipelines_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `pipelines` command against these settings' state, keys file and feedback database."""
    # Every setting (index alias, Weaviate key file, ...), as `feedback export` reads the live index too.
    env = settings_env(
        settings,
        API_KEYS_FILE=str(settings.api_keys_path),
        PIPELINES_STATE_DIR=str(settings.state_dir),
        PIPELINES_DATA_DIR=str(settings.data_dir),
        FEEDBACK_DB_URL=settings.feedback_url,
    )
    cli = str(Path(sys.executable).parent / "pipelines")
    return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)


def create_key(settings: Settings, name: str, groups: str) -> str:
    """An API key made by `pipelines keys create` (the key is printed once)."""
    made = pipelines_cli(settings, "keys", "create", "--name", name, "--groups", groups)
    assert made.returncode == 0, made.stderr
    found = re.search(r"^rag_\S+$", made.stdout, re.MULTILINE)
    assert found, made.stdout
    return found[0]


def register_adapter(settings: Settings, seed: int, reason: str = "serving test adapter") -> str:
    """Register an untrained LoRA adapter (random weights: each seed a different adapter) as a new version.

    Logged and hashed exactly as `train_candidate` does (adapter.sha256 recorded on the version), but in
    seconds: no training, no gate. Returns the version.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    import mlflow
    from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
    from pipelines.behaviour.registry import ADAPTER_HASH_TAG, adapter_sha256, download_adapter, log_adapter, register
    from pipelines.tracking import tracked_run

    base = resolve_base_model(settings)
    torch.manual_seed(seed)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], layers_to_transform=[29], task_type="CAUSAL_LM")
    model = get_peft_model(load_model(base, "cpu"), lora)
    with torch.no_grad():  # LoRA's B starts at zero; random B makes the adapter (and its hash) differ per seed
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(std=1e-3)
    with tracked_run(settings, settings.training_experiment, run_name=f"serving-adapter-{seed}") as run:
        model_uri = log_adapter(model, load_tokenizer(base), base.path)
        digest = adapter_sha256(download_adapter(settings, model_uri))
        mlflow.set_tags({ADAPTER_HASH_TAG: digest})
    return register(settings, model_uri, {ADAPTER_HASH_TAG: digest, "source": reason}, run.info.run_id)


def register_unverifiable(settings: Settings) -> str:
    """Register a version with no adapter.sha256 (an echo pyfunc model): every load of it must be refused."""
    import mlflow
    from pipelines.behaviour.registry import register
    from pipelines.tracking import tracked_run

    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: Any, model_input: list[str]) -> list[str]:  # noqa: ARG002
            return model_input

    with tracked_run(settings, settings.training_experiment, run_name="serving-unverifiable") as run:
        info = mlflow.pyfunc.log_model(name="adapter", python_model=Echo(), pip_requirements=["mlflow"])
    return register(settings, info.model_uri, {"source": "serving test: no hash"}, run.info.run_id)
