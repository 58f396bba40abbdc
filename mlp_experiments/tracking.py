"""A training run's MLflow record, as train() drives it: `MlflowTracker.recording` opens the
run, gives every way out of it the run's true status, and turns a tracking store that stops
answering into one message.

The MLflow side (recorder.Recorder) works in a process of its own, started before the training
process imports torch: MLflow's import, the store's schema check and the figures then take the
other core while this process imports torch, loads the data and trains. Where MLflow is already
imported (a sweep's trials, a run with `log_model`, whose served model is the network object
itself) it works in this process. Both answer the same calls with the same plain data.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlp_experiments.errors import UserError
from mlp_experiments.redact import redact


class TrackingUnavailable(UserError):
    """The tracking store stopped taking the run's records: training stops, checkpoint intact."""


class StoreError(Exception):
    """The tracking store refused or did not answer a call (MLflow's error, in either process)."""


def dataset_record(dataset, test_examples: bool = False) -> dict:
    """What the record of a run says of its data (plain data); with `test_examples`, the test
    labels and the first 16 test images too, for the figures."""
    test_inputs, test_labels = dataset.test
    images = str(test_inputs.dtype) == "torch.uint8"
    record = {"name": dataset.name, "source": dataset.source, "digest": dataset.digest,
              "classes": list(dataset.classes),
              "sizes": {split: len(getattr(dataset, split)[1]) for split in
                        ("train", "val", "test")}}
    if test_examples:
        record["test_labels"] = test_labels.tolist()
        record["test_images"] = test_inputs[:16].tolist() if images else None
    return record


class InProcess:
    """The recorder in this process."""

    def __init__(self, cfg: DictConfig):
        import mlflow

        from mlp_experiments.recorder import Recorder

        self.store_error = mlflow.exceptions.MlflowException
        self.recorder = Recorder(cfg)

    def call(self, name: str, arguments: dict):
        try:
            return getattr(self.recorder, name)(**arguments)
        except self.store_error as error:
            raise StoreError(str(error)) from None

    def close(self, abandon: bool = False) -> None:
        pass

    def ended(self) -> bool:
        return False

    def settle(self) -> None:
        pass


class OwnProcess:
    """The recorder in a process of its own, which opens the store while this one goes on:
    the answer to that first call is read with the next call's."""

    def __init__(self, cfg: DictConfig):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlp_experiments.recorder"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.unanswered = 0
        self.send("open", {"cfg": OmegaConf.to_container(cfg, resolve=True)})

    def send(self, name: str, arguments: dict) -> None:
        try:
            self.process.stdin.write(json.dumps({"call": name, "arguments": arguments}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):  # it died (killed, out of memory): no traceback
            raise StoreError(f"the recording process ended (exit code "
                             f"{self.process.wait()})") from None
        self.unanswered += 1

    def ended(self) -> bool:
        return self.process.poll() is not None

    def answer(self):
        line = self.process.stdout.readline()
        self.unanswered -= 1
        if not line:
            raise StoreError(f"the recording process ended (exit code {self.process.wait()})")
        reply = json.loads(line)
        if "error" not in reply:
            return reply["ok"]
        errors = {"store": StoreError, "user": UserError, "other": RuntimeError}
        raise errors[reply["kind"]](reply["error"])

    def call(self, name: str, arguments: dict):
        while self.unanswered:
            self.answer()
        self.send(name, arguments)
        return self.answer()

    def settle(self) -> None:
        """Read the answers still owed to calls whose caller was interrupted: their errors (a
        file the interrupted caller had already deleted) must not keep the run from ending."""
        while self.unanswered:
            with suppress(StoreError, UserError, RuntimeError):
                self.answer()

    def close(self, abandon: bool = False) -> None:
        """Let the process end once it has answered; `abandon` stops it at once (no run was
        started: there is nothing it could still write)."""
        if abandon:
            self.process.kill()
        elif not self.process.stdin.closed:
            with suppress(BrokenPipeError):  # it died: nothing is left to flush to
                self.process.stdin.close()
        self.process.wait()


class MlflowTracker:
    """One MLflow run per training, opened by `recording`; a resumed run continues its own
    MLflow run and logs the epochs it lacks."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_id: str | None = None
        in_process = "mlflow" in sys.modules or cfg.log_model
        self.recorder = (InProcess if in_process else OwnProcess)(cfg)

    @contextmanager
    def recording(self, cfg: DictConfig, tags: dict[str, str], run_id: str | None,
                  dataset) -> Iterator[str]:
        """Start (or continue) the run; an exception marks it crashed (FAILED), Ctrl-C or an
        exit from a signal handler (submitit's, when Slurm requeues the job) interrupted
        (KILLED), and a tracking store that stops answering stops the run with one
        message. The body ends the run itself with `finish` when training is over."""
        try:
            self.start(cfg, tags, run_id, dataset)
            yield self.run_id
        except (KeyboardInterrupt, SystemExit):
            self.end("interrupted")
            raise
        except StoreError as error:
            self.end("crashed", retries=False)
            if self.recorder.ended() and self.run_id:  # the recorder died: close its run here
                self.close_run_here("crashed")
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
        from mlp_experiments.provenance import code_diff

        self.run_id = self.recorder.call("start", {
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "config_yaml": redact(OmegaConf.to_yaml(cfg, resolve=True)),
            "code_diff": redact(code_diff()),
            "tags": tags, "run_id": run_id, "dataset": dataset_record(dataset)})

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.recorder.call("log_epoch", {"epoch": epoch, "metrics": metrics})

    def log_results(self, model, history, dataset, predictions, table: str, output: str) -> None:
        """Figures, parameter table, weights and (with `log_model`) the served model;
        `predictions` are the test set's classes (None for regression, or without `plots`);
        `output` is what the model returns (see models.ServingModel)."""
        import torch

        from mlp_experiments.models import ServingModel

        model = model.cpu().eval()
        served = None
        if self.cfg.log_model:
            test_inputs = dataset.test[0]
            served = (ServingModel(model, test_inputs.dtype == torch.uint8,
                                   dataset.normalization, output), test_inputs[:4].float())
        with tempfile.TemporaryDirectory() as folder:
            state_dict = Path(folder) / "state_dict.pt"
            torch.save(model.state_dict(), state_dict)
            arguments = {"history": history, "table": table, "state_dict": str(state_dict),
                         "dataset": dataset_record(dataset, predictions is not None),
                         "predictions": None if predictions is None else predictions.tolist()}
            self.recorder.call("log_results", arguments | ({"served": served} if served else {}))

    def finish(self, outcome: str) -> None:
        self.recorder.call("finish", {"outcome": outcome})

    def end(self, outcome: str, retries: bool = True) -> None:
        with suppress(StoreError, UserError, RuntimeError):  # the run keeps what it recorded
            self.recorder.settle()
            self.recorder.call("end", {"outcome": outcome, "retries": retries})

    def close_run_here(self, outcome: str) -> None:
        """End the run from this process, when the recorder that had it open is gone."""
        from mlp_experiments import recorder

        with suppress(Exception):  # the store itself may be what failed: the run stays open
            recorder.end_if_running(self.cfg.uri, self.run_id, outcome)

    def discard(self, run_id: str) -> None:
        """Delete a run made for this training that recorded nothing (MLflow keeps it, marked
        deleted, until `mlflow gc`)."""
        self.recorder.call("discard", {"run_id": run_id})

    def close(self) -> None:
        """After `finish` or `end`, or when training never started (train() always calls it)."""
        self.recorder.close(abandon=self.run_id is None)
