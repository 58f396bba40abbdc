"""MLflow records of a training run: params, tags, per-epoch metrics, plots and the model."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from mlp_experiments import locks, plots
from mlp_experiments.config import UserError, flatten
from mlp_experiments.models import ServingModel
from mlp_experiments.redact import redact

# What each way a run ends is in MLflow: FINISHED only for a run that trained to its end.
MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "KILLED",
                 "timeout": "KILLED", "interrupted": "KILLED", "diverged": "FAILED",
                 "crashed": "FAILED"}
# How long a call to a tracking server is retried before the run stops (urllib3 backoff:
# 0, 2, 4, 8, 16 s, each attempt timing out after 15 s): about half a minute when the server
# is down, not MLflow's default of minutes. Set the variables to choose another budget.
RETRY_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


class TrackingUnavailable(UserError):
    """The tracking store stopped taking the run's records: training stops, checkpoint intact."""


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_server(uri: str) -> None:
    """An HTTP tracking server must answer its health check now, not after an hour of training."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            return
    except (urllib.error.URLError, OSError) as error:
        raise UserError(
            f"MLflow tracking server {redact(uri)} is unreachable ({error}). Start it with "
            f"`uv run mlflow server --host 127.0.0.1 --port 5000`, point tracking.uri at a "
            f"running one, or record locally with tracking.uri=sqlite:///mlflow.db "
            f"(or tracking=none)."
        ) from None


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def open_store(uri: str, experiment: str) -> str:
    """Point MLflow at the store and return the experiment's id (created if new). Fresh
    processes on one new SQLite file take turns: creating its tables is not safe to race."""
    for name, value in RETRY_BUDGET.items():
        os.environ.setdefault(name, value)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    database = sqlite_path(uri)
    try:
        with locks.file_lock(Path(f"{database}.lock")) if database else nullcontext():
            return mlflow.set_experiment(experiment).experiment_id
    except Exception as error:
        raise UserError(
            f"Cannot open MLflow tracking store {redact(uri)} ({redact(str(error))}). Fix "
            f"tracking.uri, or record nothing with tracking=none."
        ) from None


def create_run(cfg: DictConfig, run_name: str, parent_run_id: str | None) -> str:
    """An empty run (a sweep's trial, made before it trains so a lost worker's run can be
    closed); `MlflowTracker.recording` fills it."""
    experiment_id = open_store(cfg.uri, cfg.experiment)
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return mlflow.MlflowClient().create_run(experiment_id, run_name=run_name,
                                            tags=tags).info.run_id


class MlflowTracker:
    """One MLflow run per training, opened by `recording`, which gives every way out of it the
    run's true status; a resumed run continues its own MLflow run and logs the epochs it lacks."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_id: str | None = None
        self.logged_epochs: set[int] = set()
        open_store(cfg.uri, cfg.experiment)
        self.client = mlflow.MlflowClient()

    @contextmanager
    def recording(self, cfg: DictConfig, tags: dict[str, str], run_id: str | None,
                  dataset) -> Iterator[str]:
        """Start (or continue) the run; an exception marks it crashed (FAILED), Ctrl-C
        interrupted (KILLED), and a tracking store that stops answering stops the run with one
        message. The body ends the run itself with `finish` when training is over."""
        try:
            self.start(cfg, tags, run_id, dataset)
            yield self.run_id
        except KeyboardInterrupt:
            self.end("interrupted")
            raise
        except mlflow.exceptions.MlflowException as error:
            self.end("crashed", retries=False)
            raise TrackingUnavailable(
                f"MLflow stopped taking the records of run {self.run_id} in {redact(self.cfg.uri)} "
                f"({redact(str(error)).splitlines()[0][:300]}). Training stopped; the checkpoint "
                f"keeps every finished epoch. Once the tracking store is back, run the same "
                f"command with trainer.resume=true: it continues the run and logs the epochs "
                f"MLflow lacks."
            ) from None
        except BaseException:
            self.end("crashed")
            raise

    def start(self, cfg: DictConfig, tags: dict[str, str], run_id: str | None, dataset) -> None:
        run_name = redact(self.cfg.run_name) if self.cfg.run_name else None
        # MLflow draws a new run's name from `random`, which an earlier run in this process
        # seeded: reseed it from the OS, or runs with one seed would share a name. (Training
        # seeds it again after this.)
        random.seed()
        run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags,
                               log_system_metrics=self.cfg.system_metrics)
        self.run_id = run.info.run_id
        if run.data.params:
            history = self.client.get_metric_history(self.run_id, "train_loss")
            self.logged_epochs = {metric.step for metric in history}
            return
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        mlflow.log_params({key: redact(str(value)) for key, value in flatten(resolved).items()})
        mlflow.log_text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
        log_datasets(dataset)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics, unless the run has them (a resumed run replays its epochs)."""
        if epoch in self.logged_epochs:
            return
        timestamp = int(time.time() * 1000)
        batch = [Metric(name, value, timestamp, epoch) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self.logged_epochs.add(epoch)

    def log_results(self, model, history, dataset, predictions: np.ndarray | None, table: str,
                    output: str) -> None:
        """Plots, parameter table and model; `predictions` are the test set's classes (None
        for regression, which has no confusion matrix); `output` is what the model returns
        (see models.ServingModel)."""
        figures = {"plots/learning_curves.png": plots.learning_curves(history)}
        test_inputs, test_targets = dataset.test
        images = test_inputs.dtype == torch.uint8
        if predictions is not None:
            labels = test_targets.numpy()
            figures["plots/confusion_matrix.png"] = plots.confusion_matrix(
                labels, predictions, dataset.classes
            )
            if images:
                figures["plots/predictions.png"] = plots.prediction_grid(
                    test_inputs[:16].numpy(), labels[:16], predictions[:16], dataset.classes
                )
        for path, figure in figures.items():
            mlflow.log_figure(figure, path)
            plots.plt.close(figure)
        mlflow.log_text(table, "parameters.md")
        if self.cfg.log_model:
            serving = ServingModel(model, images, dataset.normalization, output)
            self._log_model(serving, test_inputs[:4].float())

    def _log_model(self, model: torch.nn.Module, inputs: torch.Tensor) -> None:
        """The trained network's state dict, and an MLflow PyTorch model that takes raw
        inputs and returns probabilities, with its signature and input example."""
        model = model.cpu().eval()
        with tempfile.TemporaryDirectory() as folder:
            state_path = Path(folder) / "state_dict.pt"
            torch.save(model.model.state_dict(), state_path)
            mlflow.log_artifact(str(state_path), "model_state")
        example = inputs.numpy()
        with torch.no_grad():
            output = model(inputs).numpy()
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )

    def finish(self, outcome: str) -> None:
        mlflow.set_tag("outcome", outcome)
        mlflow.end_run(status=MLFLOW_STATUS[outcome])

    def end(self, outcome: str, retries: bool = True) -> None:
        """Mark the run as `outcome` if the store still answers (without retrying when it was
        the store that failed: one wait for it is enough), keeping what it recorded."""
        if mlflow.active_run() is None:
            return
        budget = {} if retries else {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        try:
            with environment(budget):
                mlflow.set_tag("outcome", outcome)
                mlflow.end_run(status=MLFLOW_STATUS[outcome])
        except mlflow.exceptions.MlflowException:
            pass  # end_run took it off the stack first: nothing retries at exit


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def log_datasets(dataset) -> None:
    """Each split as an MLflow dataset input: where it came from and a digest of its bytes."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if dataset.source == "generated":
        source = CodeDatasetSource(tags={"generator": f"mlp_experiments.data ({dataset.name})"})
    else:
        with warnings.catch_warnings():  # two registered classes claim local paths
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(dataset.source)
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        inputs, _ = getattr(dataset, split)
        digest = hashlib.sha256(f"{dataset.digest}:{split}:{len(inputs)}".encode()).hexdigest()
        meta = MetaDataset(source, name=f"{dataset.name}-{split}", digest=digest[:16])
        try:
            mlflow.log_input(meta, context=context)
        except mlflow.exceptions.MlflowException:
            # Two runs logging one new dataset at once race to create its row in a SQL store
            # (MLflow's get-or-create is not atomic); the loser's second try finds it.
            mlflow.log_input(meta, context=context)


def study_parent_run(cfg: DictConfig, study, sweep: DictConfig) -> str:
    """The study's MLflow parent run: made by the first command that runs the study, found
    again (its id is a study attribute) by every later one, so resumed trials nest under it."""
    experiment_id = open_store(cfg.uri, cfg.experiment)
    client = mlflow.MlflowClient()
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
