"""A search's best trial as an `experiment` preset under the working directory, and the command
that trains it."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlp_experiments.config.compose import CONFIG_GROUPS
from mlp_experiments.config.identity import decides_the_result

# A search's best preset goes under the working directory, never into the package or conf/, and
# `train -cd PRESETS_DIR` adds that folder to Hydra's config search path. Hydra searches it after
# the package's own conf/, so the presets are options of a subfolder of the experiment group that
# conf/ does not have: a study cannot be shadowed by a shipped preset of the same name.
PRESETS_DIR = Path("outputs") / "presets"


def best_preset_name(study_name: str) -> str:
    return f"best/{study_name}"


def best_preset_path(study_name: str) -> Path:
    return PRESETS_DIR / "experiment" / f"{best_preset_name(study_name)}.yaml"


def best_preset_command(study_name: str) -> str:
    return (f"uv run mlp-train -cd {PRESETS_DIR} "
            f"experiment={best_preset_name(study_name)}")


def preset_yaml(overrides: list[str], comment: str) -> str:
    """An `experiment` preset that composes to the same config as these overrides, less the keys
    that do not decide the result (identity.NOT_THE_RESULT: those stay the user's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    defaults, values = [], OmegaConf.create()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not decides_the_result(key):
            continue
        if key == "experiment":
            defaults.append(f"/experiment/{override.value()}")
        elif key in CONFIG_GROUPS:
            defaults.append({f"override /{key}": override.value()})
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    body = OmegaConf.create({"defaults": defaults} if defaults else {})
    body = OmegaConf.merge(body, values)
    lines = ["# @package _global_", *(f"# {line}" for line in comment.splitlines())]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(body)


def write_best_preset(study, sweep: DictConfig) -> Path:
    """The best trial as `best_preset_path(study)`, ready for `best_preset_command(study)`."""
    best = study.best_trial
    comment = (f"Best trial ({best.number}) of the study {sweep.study_name}: "
               f"{sweep.metric} {best.value:.4f}.\nWritten by mlp_experiments.sweep; "
               f"the test accuracy was not used to choose it.\n"
               f"Train it: {best_preset_command(sweep.study_name)}")
    path = best_preset_path(sweep.study_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every sweep command of a study writes it when it ends, some while others read it: whole.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(preset_yaml(best.user_attrs["overrides"], comment))
    partial.replace(path)
    return path


def publish_best_preset(study, sweep: DictConfig, kind: str) -> Path | None:
    """A search with a completed trial: write its best preset and print how to train it. (A
    comparison's best trial is one seed of one variant: no configuration to recommend.)"""
    from optuna.trial import TrialState

    if kind != "search" or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    preset = write_best_preset(study, sweep)
    return preset
