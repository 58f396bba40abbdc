"""`mlp-ui [ui.port=5000] [ui.dashboard_port=8080] [ui.host=127.0.0.1]
[ui.storage=sqlite:///optuna.db] [tracking.uri=sqlite:///mlflow.db]`

Starts the MLflow UI on the project's tracking store and, when a study storage exists,
optuna-dashboard beside it; prints both addresses; Ctrl-C stops both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from mlp_experiments import cli
from mlp_experiments.cli import described
from mlp_experiments.errors import UserError, exit_on_mistake
from mlp_experiments.stores import sqlite_path


@dataclass
class UiSettings:
    port: int = described(5000, "the MLflow UI's port")
    dashboard_port: int = described(8080, "optuna-dashboard's port")
    host: str = described("127.0.0.1", "the address both bind (anyone who reaches it can "
                                       "change the runs: see Trust boundary in docs/tracking.md)")
    storage: str = described("sqlite:///optuna.db", "the study storage optuna-dashboard "
                                                    "shows, when it exists")


@dataclass
class UiKeys:
    ui: UiSettings = field(default_factory=UiSettings)
    tracking: cli.TrackingStore = field(default_factory=cli.TrackingStore)


COMMAND = cli.Command(
    "ui", "Start the MLflow UI on the tracking store and, when the study storage exists, "
    "optuna-dashboard beside it; Ctrl-C stops both.", UiKeys,
)


def check_port_free(host: str, port: int, option: str, taken: set[int]) -> None:
    with socket.socket() as sock:
        # A port just freed by a stopped server still has TIME_WAIT connections: that is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            free = next(p for p in range(port + 1, port + 100) if p not in taken)
            raise UserError(
                f"Port {port} on {host} is in use: pass another, e.g. {option}={free}."
            ) from None


def study_storage_exists(storage: str) -> bool:
    database = sqlite_path(storage)
    return database is None or database.is_file()  # a server: optuna-dashboard will say


# MLflow 3's server also starts a job runner with seven huey consumers (about 1.4 GB) for its
# GenAI scorers and trace roll-ups; MLP runs use neither.
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server(cfg: DictConfig) -> tuple[str, list[str], str]:
    """(name, command, address) of the MLflow UI."""
    host, port = cfg.ui.host, cfg.ui.port
    return ("MLflow UI",
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cfg.tracking.uri,
             "--host", host, "--port", str(port), "--workers", "1",
             "--app-name", "mlp-experiments"],  # opens on the training view: mlflow_app.py
            f"http://{host}:{port}")


def dashboard_server(cfg: DictConfig) -> tuple[str, list[str], str]:
    """(name, command, address) of optuna-dashboard, beside this interpreter (the environment
    need not be activated)."""
    host, port = cfg.ui.host, cfg.ui.dashboard_port
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    return ("Optuna dashboard",
            [str(dashboard), cfg.ui.storage, "--host", host, "--port", str(port)],
            f"http://{host}:{port}")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGINT to each server's whole process group (workers, job runners), SIGKILL after 10 s."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left


# Outlives a SIGKILLed mlp-ui (which runs no handler) just long enough to kill its servers'
# process groups; in a session of its own, so that the terminal's Ctrl-C does not reach it.
REAPER = """
import os, signal, sys, time
parent, groups = int(sys.argv[1]), [int(group) for group in sys.argv[2:]]
while os.getppid() == parent:
    time.sleep(0.5)
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def start_reaper(processes: list[subprocess.Popen]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", REAPER, str(os.getpid()),
                             *(str(process.pid) for process in processes)],
                            start_new_session=True)


def start(server: tuple[str, list[str], str], processes: list[subprocess.Popen]) -> None:
    name, command, address = server
    processes.append(subprocess.Popen(command, start_new_session=True, env=SERVER_ENV))
    start_reaper(processes[-1:])
    print(f"{name}: {address}", flush=True)


def serve(cfg: DictConfig) -> None:
    """The MLflow UI, and optuna-dashboard once the study storage exists (a study created after
    the start is picked up); until Ctrl-C, SIGTERM or a server's exit."""
    ui = cfg.ui
    for option in ("port", "dashboard_port"):
        if not 0 < ui[option] < 65536:
            raise UserError(f"ui.{option}={ui[option]}: a port is a number from 1 to 65535.")
    ports = {ui.port, ui.dashboard_port}
    check_port_free(ui.host, ui.port, "ui.port", ports)
    check_port_free(ui.host, ui.dashboard_port, "ui.dashboard_port", ports)
    # SIGTERM (kill, docker stop, a CI timeout) stops the servers as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    processes, dashboard = [], False
    try:
        start(mlflow_server(cfg), processes)
        if not study_storage_exists(ui.storage):
            print(f"(no study storage at {ui.storage} yet: optuna-dashboard starts when a "
                  f"sweep creates it)", flush=True)
        while all(process.poll() is None for process in processes):
            if not dashboard and study_storage_exists(ui.storage):
                start(dashboard_server(cfg), processes)
                dashboard = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop(processes)


def main(arguments: list[str] | None = None) -> None:
    try:
        cfg, _ = cli.parse(COMMAND, sys.argv[1:] if arguments is None else arguments)
        serve(cfg)
    except UserError as error:
        exit_on_mistake(error)


if __name__ == "__main__":
    main()
