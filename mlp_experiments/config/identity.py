"""What identifies a run's configuration (its hash) and how its params are named in MLflow."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf


def config_hash(cfg: DictConfig, data_digest: str) -> str:
    """Identifies the exact configuration: the part of the resolved config that decides the
    result (not where it is recorded, where the data lies or whether it resumes) and the data."""
    view = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    view.pop("tracking", None)
    view["trainer"].pop("resume", None)
    view["trainer"].pop("checkpoint_dir", None)
    view["data"].pop("root", None)
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
