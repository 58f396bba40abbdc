import os
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
    mlflow.set_tracking_uri(tracking_uri)
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


def test_a_fresh_process_records_through_its_sender_process(workdir):
    """MLflow is imported by the sender process only, and a CPU run never asks cuDNN's version
    (which pages the library in: 73 MiB); the run has everything a run has."""
    uri = f"sqlite:///{workdir / 'own.db'}"
    script = (
        "import sys, torch\n"
        "from mlp_experiments.config.compose import compose_config\n"
        "from mlp_experiments.train import train\n"
        "asked = []\n"
        "torch.backends.cudnn.version = lambda: asked.append(1)\n"
        f"train(compose_config(['data=synthetic', 'trainer.epochs=2', 'tracking.uri={uri}']))\n"
        "print('mlflow' in sys.modules, bool(asked))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, cwd=workdir)
    assert result.stdout.strip().splitlines()[-1] == "False False"
    client, (run,) = only_run(uri, "mlp-experiments")
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert {"config.yaml", "parameters.md", "model_state/state_dict.pt",
            "plots/learning_curves.png", "plots/confusion_matrix.png",
            "plots/predictions.png"} <= set(artifact_paths(client, run.info.run_id))
    assert len(client.get_run(run.info.run_id).inputs.dataset_inputs) == 3


@pytest.mark.parametrize("plots", [True, False])
def test_a_sender_loads_the_figures_code_only_for_a_run_that_draws_them(synthetic_cfg,
                                                                       monkeypatch, plots):
    """A sweep's trials draw no figures: their sender does not load matplotlib (~1 s of CPU,
    30 MiB) while their training loads torch. No sender loads pandas (0.7 s, 50 MiB), nor
    Hydra, which only `mlp-plots`'s figures without a run need (0.1 s)."""
    from mlp_experiments import tracking

    monkeypatch.setattr(tracking.Sender, "process", None)  # the session's sender stays
    tracking.Sender.start(synthetic_cfg(f"tracking.plots={plots}").tracking)
    sender = tracking.Sender.process
    sender.kill()
    sender.wait()
    # The same command, with no journal to send (stdin empty): it warms up and ends.
    loaded = subprocess.run([sys.executable, "-X", "importtime", *sender.args[1:]],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in loaded.stderr.splitlines()}
    assert ("matplotlib" in imported) == plots
    assert "mlflow" in imported and "pandas.core.frame" not in imported  # tried, not loaded
    assert "hydra" not in imported
    assert "mlflow.store.tracking.sqlalchemy_store" in imported  # the session's SQLite store


def test_a_stop_between_a_records_write_and_its_count_still_ends_the_run(tmp_path, monkeypatch):
    """A SIGTERM in CI landed in Journal.append after an epoch's line reached the file and
    before it was counted: the run's end took the epoch's number, the reader stopped there,
    and the run ended FAILED (its writer gone, its end unread) instead of KILLED."""
    from mlp_experiments import tracking

    record = tracking.RunRecord(None, tmp_path)
    record.journal = tracking.Journal(tmp_path)
    record.journal.append("start", durable=True)
    real_fsync = os.fsync

    def stopped_after_the_write(descriptor):
        monkeypatch.setattr(os, "fsync", real_fsync)
        raise KeyboardInterrupt  # as the stop's handler raises it, after the line is written

    monkeypatch.setattr(os, "fsync", stopped_after_the_write)
    with pytest.raises(KeyboardInterrupt):
        record.log_epoch(1, {"train_loss": 1.0})
    record.end("interrupted")
    record.journal.close()
    records, _, cut = tracking.read_journal(tmp_path / tracking.JOURNAL)
    assert [(r["seq"], r["kind"]) for r in records] == [(0, "start"), (1, "epoch"), (2, "end")]
    assert cut is None


def sync(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlp_experiments.sync", *arguments],
                          capture_output=True, text=True, timeout=300)


def record_counts(client, run_id: str) -> dict:
    """Every row the store has of a run: metric rows per key, params, artifacts, models."""
    run = client.get_run(run_id)
    return {"metrics": {key: len(client.get_metric_history(run_id, key))
                        for key in run.data.metrics},
            "params": len(run.data.params), "artifacts": sorted(artifact_paths(client, run_id)),
            "inputs": len(run.inputs.dataset_inputs), "status": run.info.status,
            "models": len(client.search_logged_models([run.info.experiment_id]))}


def test_records_sent_but_not_marked_are_not_sent_again(synthetic_cfg, workdir, request):
    """A sender killed between the store taking records and its mark saying so: the next one
    asks the store what it has. Here every record was taken and no mark was left."""
    uri = f"sqlite:///{workdir / 'once.db'}"
    result = train(synthetic_cfg(f"tracking.uri={uri}", "trainer.epochs=3",
                                 "tracking.log_model=true"))
    client, (run,) = only_run(uri, request.node.name)
    before = record_counts(client, run.info.run_id)
    assert before["metrics"]["val_acc"] == 3 and before["models"] == 1
    (Path(result.journal) / "sent.json").unlink()  # as if the sender died before writing it
    listed = sync(str(workdir / "checkpoints"), "--dry-run")
    assert "1 journal(s)" in listed.stdout and "records" in listed.stdout, listed.stderr
    sent = sync(str(workdir / "checkpoints"))
    assert sent.returncode == 0 and "sent 1 of 1 journal(s)" in sent.stdout, sent.stderr
    _, (again,) = only_run(uri, request.node.name)  # the same run, found by its journal tag
    assert again.info.run_id == run.info.run_id
    assert record_counts(client, run.info.run_id) == before
    assert "0 journal(s)" in sync(str(workdir / "checkpoints")).stdout  # nothing left


def test_a_journal_cut_mid_line_sends_what_came_before_and_says_what_was_cut(workdir):
    """Power lost while a record was written: the records before the cut reach MLflow, the
    run (no end record, nobody writing) ends as lost, and the command says what was cut."""
    from mlp_experiments import tracking

    uri = f"sqlite:///{workdir / 'cut.db'}"
    folder = tracking.run_folder(str(workdir / "checkpoints"), "0123456789abcdef", "journal")
    journal = tracking.Journal(folder)
    journal.append("start", uri=uri, experiment="cut", tags={"outcome": "-"}, params={"a": "1"})
    for step in (1, 2, 3):
        journal.append("epoch", step=step, metrics={"train_loss": 1.0 / step})
    journal.close()
    path = folder / tracking.JOURNAL
    whole = path.read_bytes()
    path.write_bytes(whole[:-25])  # the third epoch's line, cut
    records, size, cut = tracking.read_journal(path)
    assert [r["kind"] for r in records] == ["start", "epoch", "epoch"] and size < len(whole)
    sent = sync(str(workdir / "checkpoints"))
    assert sent.returncode == 0, sent.stderr
    assert "ends in a cut line" in sent.stderr
    assert "the 3 records before it were sent" in sent.stderr
    client, (run,) = only_run(uri, "cut")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "lost"
    resumed = tracking.Journal(folder)  # a resume appends after the valid prefix
    assert resumed.seq == 3 and path.stat().st_size == size
    resumed.close()


def test_a_journal_opens_while_a_sender_asks_whether_it_is_written(tmp_path):
    """writer_alive takes the journal's lock shared for an instant: a writer opening it then
    waits for it; a journal that another writer holds is refused with one message."""
    import fcntl
    import threading

    from mlp_experiments import tracking

    tracking.Journal(tmp_path).close()
    with open(tmp_path / tracking.JOURNAL, "rb") as probe:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as writer_alive holds it
        threading.Timer(0.2, fcntl.flock, (probe, fcntl.LOCK_UN)).start()
        journal = tracking.Journal(tmp_path)
    assert tracking.writer_alive(tmp_path)
    with pytest.raises(UserError, match="Another process is writing the journal"):
        tracking.Journal(tmp_path)
    journal.close()
    assert not tracking.writer_alive(tmp_path)


def test_a_journal_keeps_secrets_masked(workdir):
    from mlp_experiments import tracking

    journal = tracking.Journal(workdir / "run")
    journal.append("start", tags={"overrides": "tracking.uri=postgresql://me:pw@db/x"})
    journal.close()
    assert "pw@" not in (workdir / "run" / tracking.JOURNAL).read_text()


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

    from mlp_experiments.stores import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    uri = open_tracking_store(workdir)  # fresh: the run creates the experiment
    train(synthetic_cfg(f"tracking.uri={uri}"))
    client, (run,) = only_run(uri, request.node.name)
    assert run.data.tags["outcome"] == "completed"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"


def test_an_experiment_without_a_kind_gets_it_and_a_chosen_kind_stays(synthetic_cfg,
                                                                      tracking_uri, request):
    from mlp_experiments.stores import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

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


def test_the_end_wait_lasts_while_records_arrive_and_not_for_a_silent_store(tmp_path):
    """Sender.wait with a 1 s allowance: a journal whose marks advance every 0.4 s (a slow
    store) is waited for well past 1 s, until it is sent; one whose mark never moves (a store
    that does not answer) is given up after 1 s without a record."""
    import threading
    import time

    from mlp_experiments import tracking

    folders = {kind: tmp_path / kind for kind in ("slow", "silent")}
    for folder in folders.values():
        journal = tracking.Journal(folder)
        for step in range(1, 7):
            journal.append("epoch", step=step, metrics={"train_loss": 1.0})
        journal.close()
        tracking.write_json(folder / tracking.MARK, {"run_id": "r", "sent": 0, "closed": False})

    def slow_store():
        for sent in range(1, 7):
            time.sleep(0.4)
            tracking.write_json(folders["slow"] / tracking.MARK,
                                {"run_id": "r", "sent": sent, "closed": sent == 6})

    sending = threading.Thread(target=slow_store)
    started = time.monotonic()
    sending.start()
    assert tracking.Sender.wait([folders["slow"]], seconds=1) == []
    assert time.monotonic() - started > 2  # six records 0.4 s apart: past the allowance
    sending.join()
    assert tracking.Sender.wait([folders["silent"]], seconds=1) == [folders["silent"]]


def test_a_wait_that_gives_up_stops_the_sender(tmp_path):
    """A store that never answers: once the end wait gives up and names mlp-sync, the sender
    stops too. Left trying, it held the command's stdout and stderr for DRAIN_S more, so a
    command whose output went to a pipe (`| tee`, a CI log) ended twice as late as it said."""
    from mlp_experiments import tracking

    folder = tmp_path / "run"
    journal = tracking.Journal(folder)  # held open: a live run, as at a command's end
    journal.append("start", uri=f"http://127.0.0.1:{free_port()}", experiment="silent",
                   tags={}, system_metrics=None)
    tracking.Sender.follow(folder)
    sender = tracking.Sender.process
    assert tracking.Sender.wait([folder], seconds=1) == [folder]
    assert sender.wait(timeout=10) is not None
    journal.close()


def test_a_wait_for_every_journal_followed_keeps_only_the_unsent_for_the_next(tmp_path,
                                                                            monkeypatch):
    """A worker waits at the end of each stage: the journals sent by then are not read again at
    the next stage's wait; one still unsent is."""
    from mlp_experiments import tracking

    folders = [tmp_path / "sent", tmp_path / "unsent"]
    for folder, mark in zip(folders, ({"sent": 1, "closed": True}, {"sent": 0, "closed": False}),
                            strict=True):
        journal = tracking.Journal(folder)
        journal.append("end", outcome="completed")
        journal.close()
        tracking.write_json(folder / tracking.MARK, {"run_id": "r", **mark})
    monkeypatch.setattr(tracking.Sender, "followed", list(folders))
    monkeypatch.setattr(tracking.Sender, "process", None)
    assert tracking.Sender.wait(seconds=0.3) == [folders[1]]
    assert tracking.Sender.followed == [folders[1]]


@pytest.mark.parametrize("first_ended", [True, False], ids=["interrupted", "killed"])
def test_a_resumed_journal_is_followed_until_its_writer_is_done(tracking_uri, request, tmp_path,
                                                                first_ended):
    """A resume opens its run's journal, then appends the run's new start: a sender that looks
    in between finds a journal it sent and closed before. It must follow it on (seen in CI: it
    was dropped there, and the resume's epochs never reached MLflow)."""
    from mlp_experiments import sender, tracking

    folder = tmp_path / "run"
    first = tracking.Journal(folder)
    first.append("start", uri=tracking_uri, experiment=request.node.name, tags={})
    first.append("epoch", step=1, metrics={"train_loss": 1.0})
    if first_ended:
        first.append("end", outcome="interrupted")
    first.close()
    assert sender.Shipment(folder).ship()  # sent and closed (a killed run: as lost)
    resumed = tracking.Journal(folder)
    shipment = sender.Shipment(folder)
    assert not shipment.ship()  # its writer is back: more is coming
    resumed.append("start", resumed=True, uri=tracking_uri, experiment=request.node.name,
                   tags={})
    resumed.append("epoch", step=2, metrics={"train_loss": 0.5})
    resumed.append("end", outcome="completed")
    assert not shipment.ship()  # all sent, but the writer may append after its end
    resumed.close()
    assert shipment.ship()
    client = MlflowClient(tracking_uri)
    run = client.get_run(tracking.read_mark(folder)["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]


def test_a_journal_sent_after_its_run_ended_samples_no_system_metrics(tracking_uri, request,
                                                                      tmp_path, monkeypatch):
    """mlp-sync sending a dead run's start record must not sample this machine for it."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from mlp_experiments import sender, tracking

    started = []
    monkeypatch.setattr(SystemMetricsMonitor, "start", lambda monitor: started.append(monitor))

    folder = tmp_path / "run"
    journal = tracking.Journal(folder)
    journal.append("start", uri=tracking_uri, experiment=request.node.name, tags={},
                   system_metrics={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    journal.append("end", outcome="completed")
    journal.close()
    assert sender.Shipment(folder).ship()
    run_id = tracking.read_mark(folder)["run_id"]
    assert started == []
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"
