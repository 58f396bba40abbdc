"""Credentials in URLs never reach the terminal or the MLflow record."""

from pathlib import Path

import optuna
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mlp_experiments.redact import redact
from mlp_experiments.sweep import command, spec
from mlp_experiments.train import train

SECRET_URL = "postgresql+psycopg://mlp:s3cr%40t@db.example:5432/optuna"


def test_redact_masks_the_password_of_any_url_in_any_text():
    assert redact(SECRET_URL) == "postgresql+psycopg://mlp:***@db.example:5432/optuna"
    assert redact(f"sweep.storage={SECRET_URL} x=1") == (
        "sweep.storage=postgresql+psycopg://mlp:***@db.example:5432/optuna x=1")
    assert redact("http://user:pw@host:5000/api") == "http://user:***@host:5000/api"
    for clean in ("sqlite:///mlflow.db", "http://host:5000/a@b", "mlp@127.0.0.1",
                  "postgresql+psycopg://mlp@127.0.0.1:5432/optuna"):
        assert redact(clean) == clean


def test_the_sweep_plan_prints_no_password(capsys, monkeypatch):
    monkeypatch.setenv("OPTUNA_STORAGE", SECRET_URL)
    sweep = OmegaConf.merge(OmegaConf.structured(spec.SweepConfig),
                            {"study_name": "s", "space": {"optimizer.lr": "choice(0.1,0.2)"},
                             "n_trials": 2})
    distributions = spec.parse_space(sweep.space)
    assert spec.storage_url(sweep) == SECRET_URL  # the environment names the storage
    command.print_plan(sweep, distributions, optuna.create_study(), 2,
                      ["tracking.uri=http://u:pw2@h:5000"])
    printed = capsys.readouterr().out
    assert "s3cr" not in printed and "pw2" not in printed and "mlp:***@db.example" in printed


def test_a_credential_in_the_config_is_masked_in_params_tags_and_config_yaml(
    synthetic_cfg, tracking_uri, request
):
    cfg = synthetic_cfg(f"tracking.run_name='{SECRET_URL}'")
    train(cfg)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(request.node.name)
    (run,) = client.search_runs([experiment.experiment_id])
    recorded = [*run.data.params.values(), *run.data.tags.values(),
                Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text()]
    assert not [text for text in recorded if "s3cr" in text]
    assert run.data.params["tracking.run_name"] == redact(SECRET_URL)
