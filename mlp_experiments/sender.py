"""Ships run journals (tracking.Journal) to MLflow, each record exactly once, through `follow`:
in the sender process every training process starts (journal folders on its stdin) and in
`mlp-sync` (sync.py). A folder's `sent.json` holds the MLflow run and how many records reached
it. A sender that did not write the last mark itself (it starts, or a call failed: the store
may have taken it or not) first asks the store what it has of the records after the mark.
"""

from __future__ import annotations

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
    """One journal folder as this process ships it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.mark = tracking.read_mark(folder)
        self.checked_up_to = None  # records below this seq may be in the store already
        self.cut, self.store = None, None
        self.seen = -1  # the journal's size when everything in it was last sent
        self.live = True  # does a process still write the journal? (asked at each ship)

    def ship(self) -> bool:
        """Send what the journal has beyond the mark; True once the run is closed and sent."""
        self.live = tracking.writer_alive(self.folder)  # before the read: if gone, it is whole
        size = (self.folder / tracking.JOURNAL).stat().st_size
        if size == self.seen and self.live:
            return False  # nothing new while training: no read, no lock, no store call
        with file_lock(self.folder / "ship.lock", wait=False):  # one sender per journal
            records, _, self.cut = tracking.read_journal(self.folder / tracking.JOURNAL)
            if not records:
                return not self.live
            if self.mark["closed"] and self.mark["sent"] == len(records):
                return True
            self.store = self.store or Store(records[0])
            pending = records[self.mark["sent"]:]
            if pending and self.checked_up_to is None:
                self.checked_up_to = len(records)
                self.known = self.store.known(self.mark["run_id"] or
                                              self.store.find(self.folder.name))
            for group in grouped(pending):
                self.send(group)
                self.mark["sent"], self.mark["closed"] = group[-1]["seq"] + 1, False
                tracking.write_json(self.folder / tracking.MARK, self.mark)
            closed = [r for r in records if r["kind"] in ("start", "end")][-1]["kind"] == "end"
            if not closed and not self.live:
                self.store.end_if_running(self.mark["run_id"], "lost")
                closed = True
            if closed:
                self.mark["closed"] = True
                tracking.write_json(self.folder / tracking.MARK, self.mark)
            self.seen = size
            return closed

    def send(self, group: list[dict]) -> None:
        uncertain = group[0]["seq"] < self.checked_up_to
        known = self.known if uncertain else {}
        first = group[0]
        if first["kind"] == "start" and self.mark["run_id"] is None:
            self.mark["run_id"] = known.get("run_id") or self.store.create(first,
                                                                          self.folder.name)
        run_id = self.mark["run_id"]
        if first["kind"] == "epoch":
            steps = known.get("steps", set())
            self.store.log_epochs(run_id, [r for r in group if r["step"] not in steps])
        elif first["kind"] == "start":
            self.store.start(run_id, first, known.get("params", {}), monitor=self.live)
        elif first["kind"] == "end":
            self.store.end(run_id, first["outcome"])
        elif first.get("artifact") not in known.get("artifacts", ()):
            self.store.log_file(run_id, self.folder, first)


def grouped(records: list[dict]) -> list[list[dict]]:
    """Consecutive epochs go in one call (up to MLflow's 1000 metrics); anything else alone."""
    groups = []
    for record in records:
        if record["kind"] == "epoch" and groups and groups[-1][0]["kind"] == "epoch" \
                and len(groups[-1]) < 50:
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


class Store:
    """The MLflow store a journal goes to, as its first record names it."""

    def __init__(self, start: dict):
        # A URL with credentials is journaled masked: they come from the environment (tracking.md).
        self.uri = start["uri"] if "***" not in start["uri"] else \
            os.environ["MLFLOW_TRACKING_URI"]
        self.experiment = start["experiment"]
        experiment_id(self.uri, self.experiment)  # first: a new store's tables, made in turns
        self.client = mlflow.MlflowClient(self.uri)

    def find(self, journal: str) -> str | None:
        found = self.client.search_runs([experiment_id(self.uri, self.experiment)],
                                        f"tags.`{JOURNAL_TAG}` = '{journal}'")
        return found[0].info.run_id if found else None

    def known(self, run_id: str | None) -> dict:
        """What the store has of a run whose last records may have been sent unmarked."""
        if run_id is None:
            return {}
        run = self.client.get_run(run_id)
        history = self.client.get_metric_history(run_id, "train_loss")
        artifacts = {a.path for folder in (None, "plots", "model_state")
                     for a in self.client.list_artifacts(run_id, folder)}
        models = self.client.search_logged_models([run.info.experiment_id],
                                                  f"source_run_id = '{run_id}'")
        return {"run_id": run_id, "params": run.data.params, "steps": {m.step for m in history},
                "artifacts": artifacts | ({"model"} if models else set())}

    def create(self, start: dict, journal: str) -> str:
        tags = {JOURNAL_TAG: journal}
        if start.get("parent_run_id"):
            tags["mlflow.parentRunId"] = start["parent_run_id"]
        return self.client.create_run(experiment_id(self.uri, self.experiment),
                                      start_time=int(start["time"] * 1000), tags=tags,
                                      run_name=start.get("run_name")).info.run_id

    def start(self, run_id: str, start: dict, known_params: dict, monitor: bool) -> None:
        """The run's params, tags and data; a resumed run's start says RUNNING again. System
        metrics are sampled here while the run trains (`monitor`), not by mlp-sync later."""
        if start.get("resumed"):
            self.client.update_run(run_id, "RUNNING")
        tags = [RunTag(key, value) for key, value in start["tags"].items()]
        params = [Param(key, value) for key, value in start.get("params", {}).items()
                  if key not in known_params]
        self.client.log_batch(run_id, params=params, tags=tags)
        if "dataset" in start:  # logging the same inputs again adds nothing (MLflow dedups)
            log_datasets(self.client, run_id, start["dataset"])
        if start.get("system_metrics") and monitor:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, tracking_uri=self.uri,
                                           resume_logging=bool(start.get("resumed")),
                                           **start["system_metrics"])
            monitor.start()
            MONITORS[run_id] = monitor

    def log_epochs(self, run_id: str, epochs: list[dict]) -> None:
        metrics = [Metric(name, value, int(epoch["time"] * 1000), epoch["step"])
                   for epoch in epochs for name, value in epoch["metrics"].items()]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics, synchronous=True)

    def log_file(self, run_id: str, folder: Path, record: dict) -> None:
        """An artifact the run wrote into its folder, the figures drawn from their data, or
        the served model (an MLflow model the training saved there)."""
        if record["kind"] == "figures":
            from mlp_experiments import plots

            plots.log_run_figures(self.client, run_id, record)
        elif record["kind"] == "model":
            log_saved_model(self.client, run_id, folder / tracking.ARTIFACTS / "model")
        else:
            parent = str(Path(record["artifact"]).parent)
            self.client.log_artifact(run_id, str(folder / tracking.ARTIFACTS / record["artifact"]),
                                     None if parent == "." else parent)

    def end(self, run_id: str, outcome: str) -> None:
        if run_id in MONITORS:
            MONITORS.pop(run_id).finish()
        self.client.set_tag(run_id, "outcome", outcome)
        self.client.set_terminated(run_id, MLFLOW_STATUS[outcome])

    def end_if_running(self, run_id: str | None, outcome: str) -> None:
        """Close a run whose training process died before it could (SIGKILL, out of memory)."""
        if run_id and self.client.get_run(run_id).info.status == "RUNNING":
            self.end(run_id, outcome)


MONITORS: dict = {}  # the system-metrics monitor of each run started with one


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


def log_saved_model(client, run_id: str, folder: Path) -> None:
    """An MLflow model saved by the training, as the run's logged model `model` (what
    `runs:/<id>/model` loads and MLflow 3 lists under the run's Logged models)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    experiment = client.get_run(run_id).info.experiment_id
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
                shipment.checked_up_to = None
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
