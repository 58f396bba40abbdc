"""The MLflow side of a tracked run: its params, tags, config, dataset inputs, per-epoch metrics,
figures, weights and (on demand) served model, written through MLflow's client.

`Recorder` runs in the training process when MLflow is already imported there (a sweep's
trials), else in a process of its own (`python -m mlp_experiments.recorder`, started by
tracking.MlflowTracker) that reads one JSON call per line and answers one JSON line each.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from omegaconf import DictConfig, OmegaConf

from mlp_experiments.config.identity import flatten
from mlp_experiments.errors import UserError
from mlp_experiments.provenance import git_commit
from mlp_experiments.redact import redact
from mlp_experiments.stores import check_server, sqlite_lock

# What each way a run ends is in MLflow: FINISHED only for a run that trained to its end.
MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "KILLED",
                 "timeout": "KILLED", "interrupted": "KILLED", "diverged": "FAILED",
                 "crashed": "FAILED", "worker_lost": "FAILED"}
# How long a call to a tracking server is retried before the run stops (urllib3 backoff:
# 0, 2, 4, 8, 16 s, each attempt timing out after 15 s): about half a minute when the server
# is down, not MLflow's default of minutes. Set the variables to choose another budget.
RETRY_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# An experiment's kind, as MLflow's UI names it (its JS bundle reads and writes the tag; MLflow's
# Python package has no constant for either): these experiments train models, not GenAI apps.
# MLflow 3.17's UI chooses its view by its sidebar's switch, whatever the kind (mlflow_app.py
# makes that switch start on Model training); the kind tells other readers what runs these are.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def open_store(uri: str, experiment: str) -> str:
    """Point MLflow at the store and return the experiment's id (created if new), looked up
    once per process (a sweep's trials reuse it). Fresh processes on one new SQLite file take
    turns: creating its tables is not safe to race."""
    for name, value in RETRY_BUDGET.items():
        os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(uri)
    return _experiment_id(uri, experiment)


@functools.cache
def _experiment_id(uri: str, experiment: str) -> str:
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    try:
        with sqlite_lock(uri):
            opened = mlflow.set_experiment(experiment)
            mark_as_model_training(opened)
            return opened.experiment_id
    except Exception as error:
        raise UserError(
            f"Cannot open MLflow tracking store {redact(uri)} ({redact(str(error))}). Fix "
            f"tracking.uri, or record nothing with tracking=none."
        ) from None


def mark_as_model_training(experiment) -> None:
    """Give the experiment MLflow's kind for model training when it has no kind: a new one, or
    one from a store this project wrote before it set the kind. A kind already there, chosen in
    the UI or by hand, stays. Called once per process and experiment (`_experiment_id` is
    cached), so an experiment that has its kind costs nothing more."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                                 MODEL_TRAINING_KIND)


def create_run(cfg: DictConfig, run_name: str, parent_run_id: str | None) -> str:
    """An empty run (a sweep's trial, made before it trains so a lost worker's run can be
    closed); `MlflowTracker.recording` fills it."""
    experiment_id = open_store(cfg.uri, cfg.experiment)
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return mlflow.MlflowClient().create_run(experiment_id, run_name=run_name,
                                            tags=tags).info.run_id


def without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


# MLflow's SQL store logs every failed query with its traceback, also those we try again or
# report in one line ourselves: its message stays, the traceback goes.
logging.getLogger("mlflow.store.db.utils").addFilter(without_traceback)
# Nor does a command print MLflow's own progress (a new store's tables, a new experiment).
for chatter in ("mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(chatter).setLevel(logging.WARNING)

# A SQLite store another process holds past MLflow's 20 s busy timeout fails a write: the
# run's final status is tried again, 2 + 4 + 6 s later, before the command says it failed.
STATUS_ATTEMPTS, STATUS_BACKOFF_S = 4, 2.0


class Recorder:
    """One MLflow run per training: `start` opens (or continues) it, `finish` or `end` closes
    it with its status. Arguments and results are plain data (they may cross a pipe as JSON); an
    MLflow error propagates for the caller to report."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_id: str | None = None
        self.logged_epochs: set[int] = set()
        self.experiment_id = open_store(cfg.uri, cfg.experiment)
        self.client = mlflow.MlflowClient()

    def start(self, config: dict, config_yaml: str, code_diff: str, tags: dict[str, str],
              run_id: str | None, dataset: dict) -> str:
        """Start the run, or continue `run_id` (a sweep trial's, or a resumed run's): a run
        with params already is resumed and only its missing epochs will be logged.
        `code_diff`: the uncommitted changes the code ran with ('' for none)."""
        run_name = redact(self.cfg.run_name) if self.cfg.run_name else None
        # MLflow draws a new run's name from `random`, which an earlier run in this process
        # seeded: reseed it from the OS, or runs with one seed would share a name.
        random.seed()
        run = mlflow.start_run(run_id=run_id, run_name=run_name,
                               experiment_id=None if run_id else self.experiment_id,
                               log_system_metrics=self.cfg.system_metrics)
        self.run_id = run.info.run_id
        tag_entities = [RunTag(key, value) for key, value in tags.items()]
        if run.data.params:
            self.client.log_batch(self.run_id, tags=tag_entities)
            history = self.client.get_metric_history(self.run_id, "train_loss")
            self.logged_epochs = {metric.step for metric in history}
            return self.run_id
        params = [Param(key, redact(str(value))) for key, value in flatten(config).items()]
        self.client.log_batch(self.run_id, params=params, tags=tag_entities)  # one call
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        if code_diff:
            self.client.log_text(self.run_id, code_diff, "code.diff")
        log_datasets(self.run_id, dataset)
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics, unless the run has them (a resumed run replays its epochs)."""
        if epoch in self.logged_epochs:
            return
        timestamp = int(time.time() * 1000)
        batch = [Metric(name, value, timestamp, epoch) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self.logged_epochs.add(epoch)

    def log_results(self, history: list[dict], dataset: dict, predictions: list[int] | None,
                    table: str, state_dict: str, served=None) -> None:
        """The figures (with `plots`), the parameter table, the weights (the file
        `state_dict`) and, in the training process, the served model `served` (with
        `log_model`)."""
        if self.cfg.plots:
            log_figures(self.client, self.run_id, history, dataset, predictions)
        self.client.log_text(self.run_id, table, "parameters.md")
        self.client.log_artifact(self.run_id, state_dict, "model_state")
        if served is not None:
            log_served_model(*served)

    def finish(self, outcome: str) -> None:
        self.close(outcome, STATUS_ATTEMPTS)

    def discard(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def end(self, outcome: str, retries: bool = True) -> None:
        """Mark the run as `outcome` (interrupted, crashed), keeping what it recorded; without
        `retries` when it was the store that failed (one wait for it is enough). A status
        that cannot be written is said on stderr: the run stays RUNNING in the store."""
        budget = {} if retries else {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        try:
            with environment(budget):
                self.close(outcome, STATUS_ATTEMPTS if retries else 1)
        except mlflow.exceptions.MlflowException as error:
            print(f"warning: the status of MLflow run {self.run_id} ({outcome}) could not be "
                  f"written: {str(error).splitlines()[0][:200]}", file=sys.stderr)

    def close(self, outcome: str, attempts: int) -> None:
        """Tag the run's outcome and end it with its status, trying a busy store again. The
        run leaves MLflow's stack of active runs first, so that MLflow's exit hook can never
        end it as FINISHED when writing our status failed."""
        if mlflow.active_run() is None:
            return
        run_id, status = mlflow.active_run().info.run_id, MLFLOW_STATUS[outcome]
        writes = [lambda: self.client.set_tag(run_id, "outcome", outcome)]
        try:
            mlflow.end_run(status=status)  # it pops the run before it writes the status
        except mlflow.exceptions.MlflowException:
            writes.append(lambda: self.client.set_terminated(run_id, status))
        for attempt in range(1, attempts + 1):
            try:
                while writes:
                    writes[0]()
                    writes.pop(0)
                return
            except mlflow.exceptions.MlflowException:
                if attempt == attempts:
                    raise
                time.sleep(STATUS_BACKOFF_S * attempt)


def log_figures(client, run_id: str, history: list[dict[str, float]], dataset: dict,
                predictions: list[int] | None) -> None:
    """The run's figures under plots/: learning curves, and for a classifier the confusion
    matrix and (for images) 16 labelled test images. `dataset` is tracking.dataset_record's."""
    from mlp_experiments import plots

    figures = {"plots/learning_curves.png": plots.learning_curves(history)}
    if predictions is not None:
        labels, predicted = np.asarray(dataset["test_labels"]), np.asarray(predictions)
        classes = tuple(dataset["classes"])
        figures["plots/confusion_matrix.png"] = plots.confusion_matrix(labels, predicted,
                                                                       classes)
        if dataset["test_images"] is not None:
            figures["plots/predictions.png"] = plots.prediction_grid(
                np.asarray(dataset["test_images"], dtype=np.uint8), labels[:16],
                predicted[:16], classes)
    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)
        plots.plt.close(figure)


def log_served_model(model, inputs) -> None:
    """An MLflow PyTorch model (a models.ServingModel) that takes raw inputs and returns
    probabilities, with its signature and input example."""
    import torch

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


def log_datasets(run_id: str, dataset: dict) -> None:
    """Each split as an MLflow dataset input: where it came from and a digest of its bytes."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    name = dataset["name"]
    if dataset["source"] == "generated":
        source = CodeDatasetSource(tags={"generator": f"mlp_experiments.data ({name})"})
    else:
        with warnings.catch_warnings():  # two registered classes claim local paths
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(dataset["source"])
    inputs = []
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        size = dataset["sizes"][split]
        digest = hashlib.sha256(f"{dataset['digest']}:{split}:{size}".encode()).hexdigest()
        meta = MetaDataset(source, name=f"{name}-{split}", digest=digest[:16])
        inputs.append(DatasetInput(meta._to_mlflow_entity(),
                                   [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    client = mlflow.MlflowClient()
    try:
        client.log_inputs(run_id, inputs)
    except mlflow.exceptions.MlflowException:
        # Two runs logging one new dataset at once race to create its row in a SQL store
        # (MLflow's get-or-create is not atomic); the loser's second try finds it.
        client.log_inputs(run_id, inputs)


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


def end_if_running(uri: str, run_id: str, outcome: str) -> None:
    """Close a sweep trial's run that its training did not close: its worker died, or was
    stopped before its training opened the run."""
    client = mlflow.MlflowClient(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "outcome", outcome)
        client.set_terminated(run_id, MLFLOW_STATUS[outcome])


def nested_run(cfg: DictConfig, study, name: str, parent_run_id: str) -> str:
    """A run that groups others under a parent (a staged comparison's stage, a variant of a
    stage): made by the first command that needs it, found again through the study."""
    key = f"mlflow_run:{name}"
    if key in study.user_attrs:
        return study.user_attrs[key]
    experiment_id = open_store(cfg.uri, cfg.experiment)
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=name.replace("/", "-"),
                            tags={"mlflow.parentRunId": parent_run_id,
                                  "sweep.stage": name})
    client.set_terminated(run.info.run_id)
    study.set_user_attr(key, run.info.run_id)
    return run.info.run_id


# ---------------------------------------------------------------------------- its own process


def serve(requests, replies) -> None:
    """Answer tracking.MlflowTracker's calls, one JSON object per line: {"call", "arguments"}
    in, {"ok": result} or {"error": message, "kind": "store" | "user" | "other"} out. The
    first call is "open" (the tracking config). Ends when the training process closes the pipe,
    as when it is killed: the run keeps the status and records it has, as in-process."""
    recorder = None
    for line in requests:
        request = json.loads(line)
        try:
            if request["call"] == "open":
                recorder = Recorder(OmegaConf.create(request["arguments"]["cfg"]))
                if recorder.cfg.plots:
                    # matplotlib for the figures: now, not while the run trains, when it would
                    # take a core from torch's threads
                    importlib.import_module("mlp_experiments.plots")
                reply = {"ok": None}
            else:
                reply = {"ok": getattr(recorder, request["call"])(**request["arguments"])}
        except mlflow.exceptions.MlflowException as error:
            reply = {"error": str(error), "kind": "store"}
        except UserError as error:
            reply = {"error": str(error), "kind": "user"}
        except Exception as error:  # reported by the training process, which stops the run
            reply = {"error": f"{type(error).__name__}: {error}", "kind": "other"}
        try:
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
        except BrokenPipeError:
            return  # the training process is gone: nobody to answer


if __name__ == "__main__":
    # Ctrl-C, and Slurm's SIGTERM and SIGUSR2 before a time limit or a requeue, reach the whole
    # job: they are the training process's to handle. It ends the run, then closes the pipe.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    # The replies get the pipe that was stdout; whatever MLflow prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)
    os._exit(0)  # every reply is written; the teardown of MLflow's modules would only cost time
