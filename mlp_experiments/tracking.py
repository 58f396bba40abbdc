"""MLflow records of a training run: params, tags, per-epoch metrics, plots and the model."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from mlp_experiments import plots
from mlp_experiments.config import UserError, flatten
from mlp_experiments.models import ServingModel

MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "KILLED",
                 "diverged": "FAILED"}


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
            f"MLflow tracking server {uri} is unreachable ({error}). Start it with "
            f"`uv run mlflow server --host 127.0.0.1 --port 5000`, point tracking.uri at a "
            f"running one, or record locally with tracking.uri=sqlite:///mlflow.db "
            f"(or tracking=none)."
        ) from None


class MlflowTracker:
    """One MLflow run per training; `run_id` given resumes an interrupted run."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_id: str | None = None

    def connect(self) -> None:
        if self.cfg.uri.startswith(("http://", "https://")):
            check_server(self.cfg.uri)
        mlflow.set_tracking_uri(self.cfg.uri)
        try:
            mlflow.set_experiment(self.cfg.experiment)
        except Exception as error:
            raise UserError(
                f"Cannot open MLflow tracking store {self.cfg.uri} ({error}). Fix tracking.uri "
                f"or record nothing with tracking=none."
            ) from None
        self.client = mlflow.MlflowClient()

    def start(self, cfg: DictConfig, tags: dict[str, str], resume_run_id: str | None,
              dataset) -> str:
        run = mlflow.start_run(run_id=resume_run_id, run_name=self.cfg.run_name, tags=tags,
                               log_system_metrics=self.cfg.system_metrics)
        self.run_id = run.info.run_id
        if resume_run_id is None:
            resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            mlflow.log_params(flatten(resolved))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            log_datasets(dataset)
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        batch = [Metric(name, value, timestamp, epoch) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

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

    def abort(self, outcome: str) -> None:
        """The run was interrupted or crashed: mark it so, and keep what it recorded."""
        if mlflow.active_run() is not None:
            mlflow.set_tag("outcome", outcome)
            mlflow.end_run(status="KILLED" if outcome == "interrupted" else "FAILED")


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
        mlflow.log_input(meta, context=context)


def study_parent_run(cfg: DictConfig, study, sweep: DictConfig) -> str:
    """The study's MLflow parent run: made by the first command that runs the study, found
    again (its id is a study attribute) by every later one, so resumed trials nest under it."""
    tracker = MlflowTracker(cfg)
    tracker.connect()
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is not None:
        try:
            tracker.client.get_run(run_id)
            return run_id
        except mlflow.exceptions.MlflowException:
            pass  # the study outlived its tracking store: start a new parent run
    run = tracker.client.create_run(
        mlflow.get_experiment_by_name(cfg.experiment).experiment_id,
        run_name=f"study-{sweep.study_name}",
        tags={"optuna.study_name": sweep.study_name, "sweep.kind": study.user_attrs["kind"],
              "git_commit": git_commit()},
    )
    params = {"sampler": sweep.sampler, "pruner": sweep.pruner, "metric": sweep.metric,
              "direction": sweep.direction, "n_trials": sweep.n_trials,
              "overrides": " ".join(sweep.overrides)}
    params |= {f"space.{key}": expression for key, expression in sweep.space.items()}
    params |= {f"variant.{name}": " ".join(o) for name, o in sweep.variants.items()}
    for key, value in params.items():
        tracker.client.log_param(run.info.run_id, key, value)
    tracker.client.set_terminated(run.info.run_id)
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id
