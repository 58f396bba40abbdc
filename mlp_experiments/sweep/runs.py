"""The MLflow runs that give a sweep its shape: the study's parent run, and a staged
comparison's run per stage and variant. Each is made by the first command that needs it and
found again through the study (its id is a study attribute), so resumed trials nest under it."""

from __future__ import annotations

import mlflow
from omegaconf import DictConfig

from mlp_experiments.provenance import git_commit
from mlp_experiments.redact import redact
from mlp_experiments.stores import open_store


def study_parent_run(cfg: DictConfig, study, sweep: DictConfig) -> str:
    experiment_id = open_store(cfg.uri, cfg.experiment)
    client = mlflow.MlflowClient(cfg.uri)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is not None:
        try:
            client.get_run(run_id)
            return run_id
        except mlflow.exceptions.MlflowException:
            pass  # the study outlived its tracking store: start a new parent run
    run = client.create_run(
        experiment_id,
        run_name=f"study-{sweep.study_name}",
        tags={"optuna.study_name": sweep.study_name, "sweep.kind": study.user_attrs["kind"],
              "git_commit": git_commit()},
    )
    params = {"sampler": sweep.sampler, "pruner": sweep.pruner, "metric": sweep.metric,
              "direction": sweep.direction, "n_trials": sweep.n_trials,
              "overrides": redact(" ".join(sweep.overrides))}
    params |= {f"space.{key}": expression for key, expression in sweep.space.items()}
    params |= {f"variant.{name}": " ".join(o) for name, o in sweep.variants.items()}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def nested_run(cfg: DictConfig, study, name: str, parent_run_id: str) -> str:
    """A run that groups others under a parent (a staged comparison's stage, a variant of a
    stage)."""
    key = f"mlflow_run:{name}"
    if key in study.user_attrs:
        return study.user_attrs[key]
    experiment_id = open_store(cfg.uri, cfg.experiment)
    client = mlflow.MlflowClient(cfg.uri)
    run = client.create_run(experiment_id, run_name=name.replace("/", "-"),
                            tags={"mlflow.parentRunId": parent_run_id, "sweep.stage": name})
    client.set_terminated(run.info.run_id)
    study.set_user_attr(key, run.info.run_id)
    return run.info.run_id
