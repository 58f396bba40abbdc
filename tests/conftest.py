import os

# One OpenMP thread per process of the suite (pytest's in-process trainings and every child
# that inherits this environment), set before torch loads: torch's default of a thread per core
# spins against the other jobs of a busy 2-core machine. 3 epochs of fashion_dropout_mlp beside
# a running suite: 134 s on 2 threads, 23 s on 1 (one run of each, measured by hand).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The `mlflow server`s the tests start run no job runner, as mlp-ui's and the compose file's do
# not: its eight processes took 1.4 GB and 17 s of CPU a start (40 s against 23 s for a server,
# two starts of each beside a running suite).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

import glob
import gzip
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from mlp_experiments.config.compose import compose_config

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


REPO = Path(__file__).resolve().parents[1]


def git(folder: Path, *arguments: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost",
                           *arguments], cwd=folder, capture_output=True, text=True, **options)


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone of this repository holding the code under test, committed: HEAD, with the
    working tree's changes (the code these tests run) applied and committed on top. Code run
    with PYTHONPATH=<clone> records the clone's commit (mlp_experiments.provenance)."""
    from mlp_experiments import provenance

    if git(REPO, "rev-parse", "HEAD").returncode:
        pytest.skip("not a git checkout")
    folder = tmp_path / "clone"
    git(REPO, "clone", "--quiet", "--no-hardlinks", str(REPO), str(folder), check=True)
    changes = provenance.code_diff()
    if changes:
        git(folder, "apply", "--binary", "-", input=changes, check=True)
        git(folder, "add", "--all", check=True)
        git(folder, "commit", "--quiet", "-m", "the working tree under test", check=True)
    return folder


def code_environment(checkout: Path) -> dict[str, str]:
    """A process's environment that runs the code of `checkout`, one thread."""
    return {"PYTHONPATH": str(checkout), "PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1",
            "HOME": os.environ.get("HOME", "/root")}


def with_code(checkout: Path, folder: Path, module: str, *arguments: str,
              **options) -> subprocess.CompletedProcess:
    """`python -m mlp_experiments.<module> ...` in `folder`, with the code of `checkout`."""
    return subprocess.run([sys.executable, "-m", f"mlp_experiments.{module}", *arguments],
                          cwd=folder, env=code_environment(checkout), capture_output=True,
                          text=True, **options)


def train_from(checkout: Path, folder: Path, *overrides: str) -> str:
    """Train (1 epoch of synthetic data unless told) with the code of `checkout`, recorded in
    `folder`/mlflow.db; the id of the run."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = with_code(checkout, folder, "train", "data=synthetic", "trainer.epochs=1",
                     "tracking.plots=false", f"tracking.uri={uri}", *overrides)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", output).group(1)
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    return run_id


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes, gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_tiny_release(folder: Path, train: int = 120, test: int = 40, gz: bool = True) -> Path:
    """The four files of an MNIST-style release with a few learnable examples."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for index, label in enumerate(labels):
            images[index, label * 2 : label * 2 + 6, :] = 200 + rng.integers(0, 50)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def open_tracking_store(folder: Path) -> str:
    """The URI of a SQLite MLflow store in `folder`, its tables created. MLflow puts a SQLite
    store's run artifacts in ./mlruns of the directory a process first opens it from, and keeps
    that for the process: opened from `folder`, they stay out of the source tree."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture(scope="session", autouse=True)
def outside_the_source_tree(tmp_path_factory):
    """The session works in a folder of its own, and so does every process it starts without a
    `cwd`, this process's sender included: MLflow puts the artifacts of an experiment it creates
    in a SQLite store in ./mlruns of the creating process's working directory, which would
    otherwise be the source tree (mlp-sync creating the store of a run whose sender was killed
    early did that in CI)."""
    from mlp_experiments import tracking

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        tracking.Sender.start()
        yield


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the session: creating its tables costs seconds."""
    return open_tracking_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def synthetic_cfg(workdir, tracking_uri, request):
    """A config factory for fast runs on synthetic data (or on a preset's own settings),
    tracked in the session's store under an experiment named after the test."""

    def make(*overrides: str, tracking: bool = True, preset: str | None = None):
        quick = ["data=synthetic", "trainer.epochs=1", "optimizer.lr=0.1"]
        base = [f"experiment={preset}"] if preset else quick
        base += ["trainer.device=cpu", f"trainer.checkpoint_dir='{workdir / 'checkpoints'}'"]
        if tracking:
            base += [f"tracking.uri={tracking_uri}", f"tracking.experiment='{request.node.name}'",
                     "tracking.log_model=false"]
        else:
            base.append("tracking=none")
        return compose_config([*base, *overrides])

    return make


class Worker(NamedTuple):
    host: str
    pid: int
    slurm_job: str | None


def worker_of(trial) -> Worker:
    """The process that runs a sweep trial, from its `worker` attribute: `host:pid`, with
    ` (Slurm job <id>)` under Slurm."""
    process, _, job = trial.user_attrs["worker"].removesuffix(")").partition(" (Slurm job ")
    host, _, pid = process.rpartition(":")
    return Worker(host, int(pid), job or None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def answers(url: str) -> bool:
    """The URL answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def default_sigint():
    """A subprocess's preexec_fn: a shell's background job (CI steps, nohup) starts with SIGINT
    ignored, and an ignored signal stays ignored across exec: give the command the Ctrl-C a
    terminal would give it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on a loopback port (trust auth), with a database
    `mlflow`; yields its SQLAlchemy URL without a database name."""
    if not PG_BIN:
        pytest.skip("apt-get install postgresql")
    # Not under pytest's tmp folder: that one is private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="mlp-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port, bin_dir = folder / "data", free_port(), Path(PG_BIN[-1])
    subprocess.run(as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlp",
                                "--auth=trust"]), check=True, capture_output=True)
    subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                str(folder / "log"), "-w", "start", "-o",
                                f"-h 127.0.0.1 -p {port} -k {folder}"]),
                   check=True, capture_output=True)
    import psycopg

    with psycopg.connect(f"postgresql://mlp@127.0.0.1:{port}/postgres", autocommit=True) as db:
        db.execute("CREATE DATABASE mlflow")
    yield f"postgresql+psycopg://mlp@127.0.0.1:{port}"
    subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                "stop"]), capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`mlflow server` on loopback with the PostgreSQL backend, serving artifacts itself (so a
    worker needs no shared folder for them); yields its URL."""
    folder, port = tmp_path_factory.mktemp("mlflow"), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow",
         "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while not answers(f"{uri}/health"):
        assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
        time.sleep(1)
    yield uri
    server.terminate()
    server.wait(timeout=30)
