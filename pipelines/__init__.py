"""The MLOps workflow's package: knowledge (re-indexing), behaviour (LoRA), serving, orchestration.

Self-hosted by default. Libraries that phone home unless told not to (MLflow's usage telemetry,
DVC's analytics, the Hugging Face hub's look-ups and telemetry) are switched off for every process
that imports this package, before any of them is imported. An operator who wants one on (say the
hub, to fetch a larger base model by id on a GPU host) sets that variable explicitly: it wins.
`tests/reliability/test_self_hosted.py` checks that `reindex` and `ask` call no outside host.
"""

import os

OFFLINE_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",  # the cross-tool opt-out, for any library that honours it
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
for _name, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


def offline_env() -> dict[str, str]:
    """The opt-outs as this process has them (an operator's explicit value kept), for child services."""
    return {name: os.environ.get(name, value) for name, value in OFFLINE_DEFAULTS.items()}
