"""Credentials in URLs never reach the terminal or the MLflow record."""

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mlp_experiments.redact import redact
from mlp_experiments.sweep import command, space, spec
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
    distributions = space.parse_space(sweep.space)
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


# ---------------------------------------------------------------------------- on screen and disk

PASSWORD = "s3cr3tpw"


def train_command(tmp_path: Path, *arguments: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mlp_experiments.train", *arguments],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("uri", [f"postgresql://mlp:{PASSWORD}@127.0.0.1:5432/mlflow",
                                 f"http://mlp:{PASSWORD}@127.0.0.1:5000"])
def test_a_password_in_tracking_uri_is_refused_before_anything_is_written(tmp_path, uri):
    result = train_command(tmp_path, f"tracking.uri={uri}", "data=synthetic")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and PASSWORD not in output and "Traceback" not in output
    assert "tracking.uri=" in output and "MLFLOW_TRACKING_PASSWORD" in output
    assert "PGPASSWORD" in output and "$MLFLOW_TRACKING_URI" in output
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>/.hydra, no store


@pytest.mark.parametrize("flags", [["--cfg", "job", "--resolve"], ["--cfg", "all", "--resolve"],
                                   ["--info", "all"], ["--help"]])
def test_what_hydras_flags_print_is_masked(tmp_path, flags):
    env = {"MLFLOW_TRACKING_URI": f"postgresql://mlp:{PASSWORD}@127.0.0.1:5432/mlflow"}
    result = train_command(tmp_path, *flags, env=env)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    if flags[0] == "--cfg":
        assert "postgresql://mlp:***@127.0.0.1:5432/mlflow" in result.stdout  # resolved, masked


def test_a_password_from_the_environment_never_reaches_the_run_folder(tmp_path):
    """The config reads $MLFLOW_TRACKING_URI through ${oc.env:...}, which Hydra writes as it is:
    the run's .hydra/*.yaml hold the interpolation, not the password."""
    env = {"MLFLOW_TRACKING_URI": f"postgresql://mlp:{PASSWORD}@127.0.0.1:5432/mlflow"}
    result = train_command(tmp_path, "data=synthetic", "trainer.epochs=1", "trainer.device=cpu",
                           "tracking.enabled=false", env=env)
    assert result.returncode == 0, result.stderr
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.parent.name == ".hydra" for path in written)
    assert not [path for path in written if PASSWORD.encode() in path.read_bytes()]
    assert "oc.env:MLFLOW_TRACKING_URI" in next(tmp_path.rglob(".hydra/config.yaml")).read_text()
