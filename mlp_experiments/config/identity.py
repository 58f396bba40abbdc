"""What identifies a run's configuration (its hash) and how its params are named in MLflow."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The keys that do not decide a run's result: where it is recorded, where its checkpoints and
# data lie, whether it resumes. Its hash leaves them out, and so does a preset that reproduces it.
NOT_THE_RESULT = ("tracking", "trainer.resume", "trainer.checkpoint_dir", "data.root")


def decides_the_result(key: str) -> bool:
    """False for a key of NOT_THE_RESULT or under one (`tracking.uri`)."""
    return not any(key == other or key.startswith(f"{other}.") for other in NOT_THE_RESULT)


def config_hash(cfg: DictConfig, data_digest: str) -> str:
    """Identifies the exact configuration: the part of the resolved config that decides the
    result, and the data."""
    view = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in NOT_THE_RESULT:
        *parents, name = key.split(".")
        node = view
        for parent in parents:
            node = node.get(parent, {})
        node.pop(name, None)
    text = json.dumps(view, sort_keys=True)
    return hashlib.sha256(f"{text}|{data_digest}".encode()).hexdigest()[:16]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
