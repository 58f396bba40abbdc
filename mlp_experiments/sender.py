"""Ships run journals (tracking.Journal) to MLflow, each record exactly once, through `follow`:
in the sender process every training process starts (journal folders on its stdin) and in
`mlp-sync` (sync.py). A folder's `sent.json` holds the MLflow run and how many records reached
it. Params, tags, artifacts, datasets and a status are safe to send twice; metric rows and a
logged model are not, so a sender that did not write the last mark itself (it starts, or a call
failed: the store may have taken it or not) first asks the store which of those it has.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag

from mlp_experiments import tracking
from mlp_experiments.locks import Locked, file_lock
from mlp_experiments.redact import redact
from mlp_experiments.stores import experiment_id

# What each way a run ends is in MLflow: FINISHED only for a run that trained to its end.
MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "KILLED",
                 "timeout": "KILLED", "interrupted": "KILLED", "diverged": "FAILED",
                 "crashed": "FAILED", "lost": "FAILED"}
# MLflow's own retries would hold a sender for minutes on a server that is down: one attempt
# per call, and the sender tries again with its own backoff (it has other journals to ship).
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
BACKOFF_S = (0.5, 1, 2, 4, 8)
JOURNAL_TAG = "mlp.journal"  # the journal a run was shipped from: how a sender finds it again


class Shipment:
    """One journal folder as this process ships it to its MLflow run."""

    def __init__(self, folder: Path):
        self.folder, self.mark = folder, tracking.read_mark(folder)
        self.uri = self.experiment = self.client = self.stored = self.monitor = self.cut = None
        self.seen = -1  # the journal's size when everything in it was last sent
        self.live = True  # does a process still write the journal? (asked at each ship)

    def ship(self) -> bool:
        """Send what the journal has beyond the mark; True once it is all sent, its run closed in
        MLflow and nobody writes it any more."""
        self.live = tracking.writer_alive(self.folder)  # before the read: if gone, it is whole
        size = (self.folder / tracking.JOURNAL).stat().st_size
        if size == self.seen and self.live:
            return False  # nothing new while training: no read, no lock, no store call
        with file_lock(self.folder / "ship.lock", wait=False):  # one sender per journal
            records, _, self.cut = tracking.read_journal(self.folder / tracking.JOURNAL)
            if not records:
                return not self.live
            # Done only once nobody writes it: a live journal whose run ended may be resumed
            # (its writer appends a start next; seen in CI: a resume's records never sent).
            if not self.live and self.mark["closed"] and self.mark["sent"] == len(records):
                return True
            self.connect(records[0])
            for group in grouped(records[self.mark["sent"]:]):
                self.send(group)
                self.mark |= {"sent": group[-1]["seq"] + 1, "closed": False}
                tracking.write_json(self.folder / tracking.MARK, self.mark)
            ended = [r["kind"] for r in records if r["kind"] in ("start", "end")][-1] == "end"
            if not ended and not self.live:  # its process died first (SIGKILL, out of memory)
                self.end_if_running("lost")
            if self.mark["closed"] != (not self.live):  # open again while a resume writes
                self.mark["closed"] = not self.live
                tracking.write_json(self.folder / tracking.MARK, self.mark)
            self.seen = size
            return self.mark["closed"]

    def connect(self, start: dict) -> None:
        """Open the store the journal's first record names, once; ask it what it has of the run
        unless this process wrote the last mark (`stored` is None after a failed call)."""
        if self.client is None:
            # A URL with credentials is journaled masked: they come from the environment
            # (tracking.md). The experiment first: a new store's tables are made in turns.
            self.uri = start["uri"] if "***" not in start["uri"] else \
                os.environ["MLFLOW_TRACKING_URI"]
            self.experiment = experiment_id(self.uri, start["experiment"])
            self.client = mlflow.MlflowClient(self.uri)
        if self.stored is None:
            self.stored = self.ask_store()

    def ask_store(self) -> dict:
        """The run (by its journal tag, unless marked), and which epochs and model it has."""
        found = [] if self.mark["run_id"] else self.client.search_runs(
            [self.experiment], f"tags.`{JOURNAL_TAG}` = '{self.folder.name}'")
        run_id = self.mark["run_id"] or (found[0].info.run_id if found else None)
        if run_id is None:
            return {"run_id": None, "steps": set(), "model": False}
        steps = {metric.step for metric in self.client.get_metric_history(run_id, "train_loss")}
        models = self.client.search_logged_models([self.experiment],
                                                  f"source_run_id = '{run_id}'")
        return {"run_id": run_id, "steps": steps, "model": bool(models)}

    def send(self, group: list[dict]) -> None:
        first = group[0]
        if first["kind"] == "start" and self.mark["run_id"] is None:
            self.mark["run_id"] = self.stored["run_id"] or self.create_run(first)
        run_id = self.mark["run_id"]
        if first["kind"] == "epoch":
            metrics = [Metric(name, value, int(epoch["time"] * 1000), epoch["step"])
                       for epoch in group if epoch["step"] not in self.stored["steps"]
                       for name, value in epoch["metrics"].items()]
            self.client.log_batch(run_id, metrics=metrics, synchronous=True)
        elif first["kind"] == "start":
            self.start(run_id, first)
        elif first["kind"] == "end":
            self.end(first["outcome"])
        elif first["kind"] == "figures":  # drawn here, from the data the run journaled
            from mlp_experiments import plots

            plots.log_run_figures(self.client, run_id, first)
        elif first["kind"] == "model" and not self.stored["model"]:
            log_saved_model(self.client, run_id, self.experiment,
                            self.folder / tracking.ARTIFACTS / "model")
        elif first["kind"] == "artifact":
            path, parent = first["artifact"], str(Path(first["artifact"]).parent)
            self.client.log_artifact(run_id, str(self.folder / tracking.ARTIFACTS / path),
                                     None if parent == "." else parent)

    def create_run(self, start: dict) -> str:
        tags = {JOURNAL_TAG: self.folder.name}
        if start.get("parent_run_id"):
            tags["mlflow.parentRunId"] = start["parent_run_id"]
        return self.client.create_run(self.experiment, start_time=int(start["time"] * 1000),
                                      tags=tags, run_name=start.get("run_name")).info.run_id

    def start(self, run_id: str, start: dict) -> None:
        """The run's params, tags and data; a resumed run's start says RUNNING again. System
        metrics are sampled here while the run trains, not by mlp-sync later."""
        if start.get("resumed"):
            self.client.update_run(run_id, "RUNNING")
        self.client.log_batch(run_id, tags=[RunTag(*tag) for tag in start["tags"].items()],
                              params=[Param(*param) for param in start.get("params", {}).items()])
        if "dataset" in start:
            log_datasets(self.client, run_id, start["dataset"])
        if start.get("system_metrics") is not None and self.live:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            os.environ.update(start["system_metrics"])  # the training process's settings
            self.monitor = SystemMetricsMonitor(run_id, tracking_uri=self.uri,
                                                resume_logging=bool(start.get("resumed")))
            self.monitor.start()

    def end(self, outcome: str) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        self.client.set_tag(self.mark["run_id"], "outcome", outcome)
        self.client.set_terminated(self.mark["run_id"], MLFLOW_STATUS[outcome])

    def end_if_running(self, outcome: str) -> None:
        if self.mark["run_id"] and \
                self.client.get_run(self.mark["run_id"]).info.status == "RUNNING":
            self.end(outcome)


def grouped(records: list[dict]) -> list[list[dict]]:
    """Consecutive epochs go in one call, 50 at most (MLflow takes up to 1000 metrics a call);
    anything else alone."""
    groups = []
    for kind, same_kind in itertools.groupby(records, key=lambda record: record["kind"]):
        run, size = list(same_kind), 50 if kind == "epoch" else 1
        groups += [run[start:start + size] for start in range(0, len(run), size)]
    return groups


def log_datasets(client, run_id: str, dataset: dict) -> None:
    """Each split as an MLflow dataset input: where it came from and a digest of its bytes."""
    import hashlib

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
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
        inputs.append(DatasetInput(Dataset(**meta.to_dict()),
                                   [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    try:
        client.log_inputs(run_id, inputs)
    except mlflow.exceptions.MlflowException:
        # Two runs logging one new dataset at once race to create its row in a SQL store
        # (MLflow's get-or-create is not atomic); the loser's second try finds it.
        client.log_inputs(run_id, inputs)


def log_saved_model(client, run_id: str, experiment: str, folder: Path) -> None:
    """An MLflow model saved by the training, as the run's logged model `model` (what
    `runs:/<id>/model` loads and MLflow 3 lists under the run's Logged models)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    model = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


# ---------------------------------------------------------------------------- the processes


def follow(folders: list[Path], closed: threading.Event, grace_s: float) -> list[Path]:
    """Ship each folder (more may be added to `folders`) as it grows until its run is closed
    and sent; once `closed` is set, go on for at most `grace_s`. Returns the folders left."""
    shipments: dict[Path, Shipment] = {}
    failures, closed_at = 0, None
    while True:
        while folders:
            folder = folders.pop(0)
            shipments.setdefault(folder, Shipment(folder))
        for folder, shipment in list(shipments.items()):
            try:
                if shipment.ship():
                    del shipments[folder]
                    if shipment.cut:
                        print(f"warning: {folder / tracking.JOURNAL} ends in a cut line "
                              f"({shipment.cut}); the {shipment.mark['sent']} records before "
                              f"it were sent", file=sys.stderr, flush=True)
                failures = 0
            except Locked:  # another sender has it now: ours looks again later
                pass
            except Exception as error:  # the store refused or did not answer: try again
                shipment.stored = None
                if not failures:
                    print(f"warning: MLflow is not taking the records of {folder} "
                          f"({redact(str(error)).splitlines()[0][:200]}): training goes on, "
                          f"retrying", file=sys.stderr, flush=True)
                failures += 1
                time.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
        if closed.is_set():
            closed_at = closed_at or time.monotonic()
            if not shipments or time.monotonic() - closed_at > grace_s:
                return list(shipments)
        time.sleep(0.05)


def serve(preload: list[str]) -> None:
    """The sender process: a journal folder per stdin line; ends once stdin closes and its
    journals are sent, or DRAIN_S later (mlp-sync sends what is left)."""
    folders: list[Path] = []
    closed = threading.Event()

    def read_folders():
        for line in sys.stdin:
            folders.append(Path(line.strip()))
        closed.set()

    threading.Thread(target=read_folders, daemon=True).start()
    warm_up(preload)
    follow(folders, closed, tracking.DRAIN_S)


def warm_up(preload: list[str]) -> None:
    """Load what the first run will need (seconds of a core) now, while the training process
    loads torch and its data on the other one, not during its first epoch: for a store in a
    database (its URL's scheme sqlite, postgresql, ...), MLflow's SQL store, and the figures'
    code (`figures`)."""
    scheme = preload[0] if preload else ""
    if scheme and scheme not in ("http", "https", "databricks", "file"):
        from mlflow.store.tracking import sqlalchemy_store  # noqa: F401
    if "figures" in preload:
        from mlp_experiments import plots  # noqa: F401


if __name__ == "__main__":  # its signals are ignored from its start (mlp_experiments/__init__.py)
    os.environ.update(FAIL_FAST)
    serve(sys.argv[1:])
    os._exit(0)  # everything is sent or left in the journals: MLflow's teardown only costs time
