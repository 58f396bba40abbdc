"""A run's MLflow record, journaled: train() appends every record of a run (its start with
params, tags and data, each epoch's metrics, artifacts, its end and status) to an append-only
journal in the run's folder, `<trainer.checkpoint_dir>/<config hash>/runs/<journal id>/`.
A sender process (mlp_experiments/sender.py, one per training process, started before torch
is imported so that MLflow loads on the other core) ships journals to MLflow as they grow.
Training never waits for the tracking store; a command waits up to DRAIN_S at its end for its
records to reach it, then names what is left and `mlp-sync`, which sends it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlp_experiments.config.identity import flatten
from mlp_experiments.errors import UserError, stop_received
from mlp_experiments.redact import redact
from mlp_experiments.stores import sqlite_path

JOURNAL, MARK, ARTIFACTS = "journal.jsonl", "sent.json", "artifacts"
DRAIN_S = 30  # how long a command waits at its end with no record reaching MLflow


def run_folder(checkpoint_dir: str, run_hash: str, journal_id: str) -> Path:
    return Path(checkpoint_dir).resolve() / run_hash / "runs" / journal_id


def new_journal_id() -> str:
    return uuid.uuid4().hex


def read_journal(path: Path) -> tuple[list[dict], int, str | None]:
    """The journal's records up to the first line that is cut or not its next record, the
    bytes they take, and what was cut (None when nothing was)."""
    records, size = [], 0
    data = path.read_bytes() if path.exists() else b""
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
            whole = line.endswith(b"\n") and record["seq"] == len(records)
        except (ValueError, KeyError, TypeError):
            whole = False
        if not whole:
            return records, size, f"{len(data) - size} bytes after record {len(records) - 1}"
        records.append(record)
        size += len(line)
    return records, size, None


def read_mark(folder: Path) -> dict:
    """What the sender has sent of a journal: its MLflow run, the count of records sent, and
    whether it is done (nobody writes it any more, its run is closed in MLflow)."""
    if (folder / MARK).exists():
        return json.loads((folder / MARK).read_text())
    return {"run_id": None, "sent": 0, "closed": False}


def write_json(path: Path, value: dict) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def writer_alive(folder: Path) -> bool:
    """Does a process hold the journal open for writing? (The kernel drops a dead one's lock.)"""
    with open(folder / JOURNAL, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


class Journal:
    """One run's journal, held open (and locked) by the process that writes it: a record a
    line, numbered from 0, flushed at once and fsync'd at every epoch and status change."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / JOURNAL, "ab")  # noqa: SIM115 (held open until close())
        for _ in range(20):  # a sender asking writer_alive holds it for microseconds
            with suppress(BlockingIOError):
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            time.sleep(0.05)
        else:
            self.file.close()
            raise UserError(f"Another process is writing the journal in {folder}.")
        self.reread()

    def reread(self) -> None:
        """Count the records the file holds; a line cut by a crash goes before the next is
        appended. Again after a stop (Ctrl-C, SIGTERM) that may have landed inside `append`,
        between its line reaching the file and its count (seen in CI: two records numbered 4,
        the run's end unread, the run FAILED instead of KILLED)."""
        with suppress(OSError):
            self.file.flush()
        records, size, _ = read_journal(self.folder / JOURNAL)
        self.file.truncate(size)
        self.seq = len(records)
        self.epochs = {r["step"] for r in records if r["kind"] == "epoch"}

    def append(self, kind: str, durable: bool = False, **fields) -> None:
        line = json.dumps({"seq": self.seq, "kind": kind, "time": time.time(), **fields})
        try:
            self.file.write((redact(line) + "\n").encode())
            self.file.flush()
            if durable:
                os.fsync(self.file.fileno())
        except OSError as error:
            raise UserError(f"Cannot write the run's journal in {self.folder}: "
                            f"{error.strerror}. Free space there or set trainer.checkpoint_dir "
                            f"to a folder with room, then resume with trainer.resume=true.") \
                from None
        self.seq += 1

    def artifact(self, name: str, content: bytes) -> None:
        """A file of the run (its artifact `name` in MLflow), written first, then journaled."""
        path = self.folder / ARTIFACTS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:  # on disk before the journal names it
            file.write(content)
            os.fsync(file.fileno())
        self.append("artifact", artifact=name)

    def close(self) -> None:
        self.file.close()


class Sender:
    """This process's sender (`python -m mlp_experiments.sender`): started once, told each
    journal folder to ship on its stdin; a sender that died is replaced at the next one."""

    process: subprocess.Popen | None = None
    followed: list[Path] = []  # the journals it was told and not yet seen sent, for a wait

    @classmethod
    def running(cls) -> bool:
        return cls.process is not None and cls.process.poll() is None

    @classmethod
    def start(cls, cfg: DictConfig | None = None) -> None:
        """Start it unless it runs: given the run's tracking config, it loads what sending
        that run needs (its kind of store, the figures' code if it draws them) at once, while
        this process is still loading torch and the data."""
        if not cls.running():
            # Only the URL's scheme: a URL may hold credentials.
            preload = [cfg.uri.partition(":")[0], *(["figures"] if cfg.plots else [])] \
                if cfg is not None else []
            cls.process = subprocess.Popen([sys.executable, "-m", "mlp_experiments.sender",
                                            *preload], stdin=subprocess.PIPE, text=True)

    @classmethod
    def follow(cls, folder: Path) -> None:
        cls.start()
        cls.followed.append(folder)
        with suppress(BrokenPipeError):  # it died just now: the wait says what is unsent
            cls.process.stdin.write(f"{folder}\n")
            cls.process.stdin.flush()

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None:
            cls.process.kill()

    @classmethod
    def wait(cls, folders: list[Path] | None = None, seconds: float = DRAIN_S) -> list[Path]:
        """Wait until each journal (every one followed, by default) is sent and its run closed
        in MLflow, while records keep arriving: at most `seconds` without one (a slow store
        is waited for, one that does not answer is not; signals do not cut it short: the
        records are on their way); say what is left."""
        left = list(dict.fromkeys(cls.followed if folders is None else folders))
        marks: dict[Path, dict] = {}  # each journal's last mark read (a sent one's is final)
        sent_before, deadline = -1, 0.0
        while left:
            try:
                marks |= {folder: read_mark(folder) for folder in left}
                sent = sum(mark["sent"] for mark in marks.values())
                if sent > sent_before:  # a record arrived: the allowance starts again
                    sent_before, deadline = sent, time.monotonic() + seconds
                left = [folder for folder in left if not shipped(folder, marks[folder])]
                if not left or time.monotonic() > deadline or not cls.running():
                    break  # a sender gone (killed) leaves the rest to mlp-sync
                time.sleep(0.05)
            except KeyboardInterrupt:
                continue
        if folders is None:  # a worker's later waits (its next stages) skip the sent ones
            cls.followed = left
        if left:  # the stated wait is over: mlp-sync sends the rest (a sender left trying
            cls.stop()  # holds the command's output pipe open)
        for folder in left:
            print(f"warning: {unsent(folder)} record(s) of this run are not in MLflow yet "
                  f"(journal {folder / JOURNAL}): once the store answers, send them with "
                  f"`uv run mlp-sync {folder.parent.parent.parent}`", file=sys.stderr,
                  flush=True)
        return left


def shipped(folder: Path, mark: dict | None = None) -> bool:
    """Are all the journal's records in MLflow, its writer gone and its run closed there?
    (`mark`: its read_mark, where the caller has just read it.)"""
    mark = mark or read_mark(folder)
    return mark["closed"] and mark["sent"] == len(read_journal(folder / JOURNAL)[0])


def left_over(folder: Path) -> bool:
    """Does the journal in `folder` have records or a status not in MLflow that no live
    process will send (its writer, whose sender sends it, is gone)?"""
    return (folder / JOURNAL).exists() and not shipped(folder) and not writer_alive(folder)


def unsent(folder: Path) -> int:
    return len(read_journal(folder / JOURNAL)[0]) - read_mark(folder)["sent"]


def dataset_record(dataset) -> dict:
    """What the record of a run says of its data (plain data)."""
    return {"name": dataset.name, "source": dataset.source, "digest": dataset.digest,
            "sizes": {split: len(getattr(dataset, split)[1]) for split in
                      ("train", "val", "test")}}


def figure_data(dataset, history: list[dict], predictions) -> dict:
    """What a run's figures are drawn from: its history and, for a classifier, the test labels,
    the predicted classes and (for images) the first 16 test images."""
    if predictions is None:
        return {"history": history, "predictions": None}
    test_inputs, test_labels = dataset.test
    images = str(test_inputs.dtype) == "torch.uint8"
    return {"history": history, "predictions": predictions.tolist(),
            "test_labels": test_labels.tolist(), "classes": list(dataset.classes),
            "test_images": test_inputs[:16].tolist() if images else None}


class RunRecord:
    """What train() records of one run (`cfg`: its tracking config) in the journal in `folder`:
    `recording` opens it and gives every way out of the run its true status."""

    def __init__(self, cfg: DictConfig, folder: Path):
        self.cfg, self.folder = cfg, folder

    @contextmanager
    def recording(self, cfg: DictConfig, tags: dict[str, str], dataset,
                  parent_run_id: str | None, run_name: str | None) -> Iterator[None]:
        self.journal = Journal(self.folder)
        Sender.follow(self.folder)
        try:
            self.start(cfg, tags, dataset, parent_run_id, run_name)
            yield
        except BaseException as error:  # a stop, or an error a stop caused (stops_over_errors)
            stopped = isinstance(error, KeyboardInterrupt | SystemExit) or stop_received()
            self.end("interrupted" if stopped else "crashed")
            raise
        finally:
            self.journal.close()

    def start(self, cfg: DictConfig, tags: dict[str, str], dataset, parent_run_id: str | None,
              run_name: str | None) -> None:
        from mlp_experiments.provenance import code_diff

        database = sqlite_path(self.cfg.uri)  # made absolute: mlp-sync may run elsewhere
        uri = f"sqlite:///{database.resolve()}" if database else self.cfg.uri
        # MLflow's system-metrics settings, as this process's environment has them now.
        sampling = {name: value for name, value in os.environ.items()
                    if name.startswith("MLFLOW_SYSTEM_METRICS_")}
        store = {"uri": uri, "experiment": self.cfg.experiment, "tags": tags,
                 "system_metrics": sampling if self.cfg.system_metrics else None}
        if self.journal.seq:  # a resumed run: its params, data and config are journaled
            self.journal.append("start", durable=True, resumed=True, **store)
            return
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.journal.append("start", durable=True, **store, parent_run_id=parent_run_id,
                            run_name=run_name or self.cfg.run_name, dataset=dataset_record(dataset),
                            params={key: str(value) for key, value in flatten(config).items()})
        self.journal.artifact("config.yaml", redact(OmegaConf.to_yaml(cfg, resolve=True)).encode())
        if diff := code_diff():
            self.journal.artifact("code.diff", redact(diff).encode())

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics, unless the journal has them (a resumed run replays its epochs)."""
        if epoch not in self.journal.epochs:
            self.journal.append("epoch", durable=True, step=epoch, metrics=metrics)
            self.journal.epochs.add(epoch)

    def log_results(self, model, history, dataset, predictions, table: str, output: str) -> None:
        """Weights, parameter table, the figures' data (with `plots`) and, with `log_model`,
        the served model; `predictions` are the test set's classes (None for regression)."""
        import io

        import torch

        model = model.cpu().eval()
        weights = io.BytesIO()
        torch.save(model.state_dict(), weights)
        self.journal.artifact("model_state/state_dict.pt", weights.getvalue())
        self.journal.artifact("parameters.md", table.encode())
        if self.cfg.plots:
            self.journal.append("figures", artifact="plots/learning_curves.png",
                                **figure_data(dataset, history, predictions))
        if self.cfg.log_model:
            from mlp_experiments.models import save_served_model

            save_served_model(model, dataset, output, self.folder / ARTIFACTS / "model")
            self.journal.append("model", artifact="model")

    def finish(self, outcome: str) -> None:
        self.journal.append("end", durable=True, outcome=outcome)

    def end(self, outcome: str) -> None:
        """The run's end on the way out of an exception (a stop, a crash)."""
        with suppress(UserError, OSError):  # a full disk: the run ends as lost, with its records
            self.journal.reread()
            self.journal.append("end", durable=True, outcome=outcome)

