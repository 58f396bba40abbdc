import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import free_port
from mlflow import MlflowClient

from mlp_experiments import cluster, provenance
from mlp_experiments.errors import UserError
from mlp_experiments.train import train

EPOCH_METRICS = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "lr", "epoch_time_s", "samples_per_s"}


def only_run(tracking_uri, experiment_name):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def artifact_paths(client, run_id, path=None):
    paths = []
    for info in client.list_artifacts(run_id, path):
        paths += artifact_paths(client, run_id, info.path) if info.is_dir else [info.path]
    return paths


def test_one_epoch_run_is_read_back_from_mlflow(synthetic_cfg, tracking_uri, request):
    cfg = synthetic_cfg("tracking.log_model=true", "optimizer.lr=0.05")
    result = train(cfg)
    client, runs = only_run(tracking_uri, request.node.name)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    params = run.data.params
    assert params["optimizer.lr"] == "0.05" and params["model.hidden_sizes"] == "[256]"
    assert params["trainer.batch_size"] == "256" and params["data.name"] == "synthetic"
    assert len(run.data.tags["config_hash"]) == 16 and run.data.tags["device"] == "cpu"
    assert "git_commit" in run.data.tags
    assert set(run.data.metrics) == EPOCH_METRICS
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, result.history[0]["val_acc"])]
    artifacts = set(artifact_paths(client, run.info.run_id))
    assert {"config.yaml", "parameters.md", "plots/learning_curves.png",
            "plots/confusion_matrix.png", "plots/predictions.png",
            "model_state/state_dict.pt"} <= artifacts
    config_path = client.download_artifacts(run.info.run_id, "config.yaml")
    assert "lr: 0.05" in Path(config_path).read_text()
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.zeros(2, 28, 28)).shape == (2, 10)  # raw pixels in, probabilities out


def test_a_run_keeps_its_weights_and_logs_figures_and_served_model_as_asked(
        synthetic_cfg, tracking_uri, request):
    train(synthetic_cfg("tracking.plots=false"))  # and tracking.log_model=false, the default
    client, (run,) = only_run(tracking_uri, request.node.name)
    artifacts = set(artifact_paths(client, run.info.run_id))
    assert {"config.yaml", "parameters.md", "model_state/state_dict.pt"} <= artifacts
    assert not [path for path in artifacts if path.startswith("plots/")]
    assert not client.search_logged_models([run.info.experiment_id])


def test_a_resumed_run_continues_the_same_mlflow_run(synthetic_cfg, tracking_uri, request):
    def stop_after_epoch_2(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    cfg = synthetic_cfg("trainer.epochs=3")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=(stop_after_epoch_2,))
    client, (interrupted,) = only_run(tracking_uri, request.node.name)
    assert interrupted.info.status == "KILLED"
    assert interrupted.data.tags["outcome"] == "interrupted"
    cfg.trainer.resume = True
    train(cfg)
    client, (run,) = only_run(tracking_uri, request.node.name)
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [1, 2, 3]


def test_a_diverged_run_is_recorded_with_its_metrics(synthetic_cfg, tracking_uri, request):
    train(synthetic_cfg("trainer.epochs=5", "optimizer.lr=1e6"))
    client, (run,) = only_run(tracking_uri, request.node.name)
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "diverged"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert losses and not np.isfinite(losses[-1])


def test_an_unreachable_tracking_server_fails_before_training(synthetic_cfg, workdir):
    cfg = synthetic_cfg("tracking=mlflow", f"tracking.uri=http://127.0.0.1:{free_port()}")
    with pytest.raises(UserError, match="unreachable.*mlflow server --host 127.0.0.1"):
        train(cfg)
    assert not (workdir / "checkpoints").exists()


def test_multirun_gives_one_mlflow_run_per_job(workdir, tracking_uri):
    command = [
        sys.executable, "-m", "mlp_experiments.train", "-m", "data=synthetic",
        "optimizer=sgd,adam", "trainer.seed=0,1", "trainer.epochs=1", "trainer.device=cpu",
        f"tracking.uri={tracking_uri}", "tracking.experiment=multirun", "tracking.log_model=false",
        f"hydra.sweep.dir={workdir / 'multirun'}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    client, runs = only_run(tracking_uri, "multirun")
    jobs = {(r.data.tags["variant.optimizer"], r.data.params["trainer.seed"]) for r in runs}
    assert jobs == {("sgd", "0"), ("sgd", "1"), ("adam", "0"), ("adam", "1")}
    assert all(r.data.tags["overrides"] for r in runs)


def test_runs_with_the_same_seed_get_distinct_names(synthetic_cfg, tracking_uri, request):
    for lr in (0.1, 0.2, 0.3):  # one process, seed 0 each time, as in a Hydra multirun
        train(synthetic_cfg(f"optimizer.lr={lr}", "trainer.seed=0"))
    _, runs = only_run(tracking_uri, request.node.name)
    assert len({run.info.run_name for run in runs}) == 3


def test_an_untracked_run_never_imports_mlflow_or_matplotlib(workdir):
    script = (
        "import sys\n"
        "from mlp_experiments.config.compose import compose_config\n"
        "from mlp_experiments.train import train\n"
        "train(compose_config(['data=synthetic', 'trainer.epochs=1', 'tracking=none']))\n"
        "print(sorted(m for m in ('mlflow', 'matplotlib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_fresh_process_records_through_its_own_recorder_process(workdir):
    """MLflow is imported by the recorder process only; the run has everything a run has."""
    uri = f"sqlite:///{workdir / 'own.db'}"
    script = (
        "import sys\n"
        "from mlp_experiments.config.compose import compose_config\n"
        "from mlp_experiments.train import train\n"
        f"train(compose_config(['data=synthetic', 'trainer.epochs=2', 'tracking.uri={uri}']))\n"
        "print('mlflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, cwd=workdir)
    assert result.stdout.strip().splitlines()[-1] == "False"
    client, (run,) = only_run(uri, "mlp-experiments")
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert {"config.yaml", "parameters.md", "model_state/state_dict.pt",
            "plots/learning_curves.png", "plots/confusion_matrix.png",
            "plots/predictions.png"} <= set(artifact_paths(client, run.info.run_id))
    assert len(client.get_run(run.info.run_id).inputs.dataset_inputs) == 3


def test_the_recorder_answers_each_call_with_its_result_or_its_kind_of_error(workdir):
    import io
    import json

    from mlp_experiments import recorder

    calls = [{"call": "open", "arguments": {"cfg": {
                  "uri": f"sqlite:///{workdir / 'r.db'}", "experiment": "e", "run_name": None,
                  "plots": False, "log_model": False, "system_metrics": False}}},
             {"call": "log_epoch", "arguments": {"epoch": 1}}]
    replies = io.StringIO()
    recorder.serve(io.StringIO("".join(json.dumps(c) + "\n" for c in calls)), replies)
    opened, bad = (json.loads(line) for line in replies.getvalue().splitlines())
    assert opened == {"ok": None}
    assert bad["kind"] == "other" and "metrics" in bad["error"]


def test_a_run_names_the_slurm_job_it_ran_in(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert cluster.slurm_tags() == {}
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert cluster.slurm_tags() == {"slurm_job_id": "42", "slurm_restart_count": "0"}
    for name, value in (("SLURM_ARRAY_JOB_ID", "40"), ("SLURM_ARRAY_TASK_ID", "2"),
                        ("SLURM_RESTART_COUNT", "1")):
        monkeypatch.setenv(name, value)
    assert cluster.slurm_tags() == {"slurm_job_id": "40_2", "slurm_array_task_id": "2",
                                    "slurm_restart_count": "1"}


def test_a_new_experiment_is_marked_as_model_training(synthetic_cfg, workdir, request):
    """The kind MLflow's UI reads (`mlflow.experimentKind`), set by the run that creates it."""
    from conftest import open_tracking_store

    from mlp_experiments.recorder import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    uri = open_tracking_store(workdir)  # fresh: the run creates the experiment
    train(synthetic_cfg(f"tracking.uri={uri}"))
    client, (run,) = only_run(uri, request.node.name)
    assert run.data.tags["outcome"] == "completed"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"


def test_an_experiment_without_a_kind_gets_it_and_a_chosen_kind_stays(synthetic_cfg,
                                                                      tracking_uri, request):
    from mlp_experiments.recorder import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    client = MlflowClient(tracking_uri)
    older = client.create_experiment(f"{request.node.name}-older")  # as an older version left it
    chosen = client.create_experiment(f"{request.node.name}-chosen",
                                      tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for experiment_id in (older, chosen):
        name = client.get_experiment(experiment_id).name
        train(synthetic_cfg(f"tracking.experiment='{name}'"))
        assert len(client.search_runs([experiment_id])) == 1
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_recorded_commit_is_the_packages_checkout_else_the_images(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(provenance.__file__).parent)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    provenance.git_commit.cache_clear()
    monkeypatch.chdir(tmp_path)  # run from a folder that is no checkout
    try:
        assert provenance.git_commit() == head.stdout.strip()
        provenance.git_commit.cache_clear()
        monkeypatch.setenv("PATH", str(tmp_path))  # no git, as in the image
        monkeypatch.setenv("MLP_EXPERIMENTS_GIT_COMMIT", "0123abc")
        assert provenance.git_commit() == "0123abc"
    finally:
        provenance.git_commit.cache_clear()
