"""`python -m mlp_experiments.ui [port=5000] [dashboard_port=8080] [host=127.0.0.1]
[tracking.uri=sqlite:///mlflow.db] [storage=sqlite:///optuna.db]`

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
from pathlib import Path

from mlp_experiments.config.schemas import TrackingConfig
from mlp_experiments.errors import UserError

DEFAULTS = {"port": "5000", "dashboard_port": "8080", "host": "127.0.0.1",
            "tracking.uri": os.environ.get("MLFLOW_TRACKING_URI", TrackingConfig.uri),
            "storage": "sqlite:///optuna.db"}


def parse_arguments(arguments: list[str]) -> dict[str, str]:
    values = dict(DEFAULTS)
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key not in DEFAULTS or not value:
            raise UserError(
                f"'{argument}' is not an option: use {', '.join(DEFAULTS)} (key=value)."
            )
        values[key] = value
    return values


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
    if storage.startswith("sqlite:///"):
        return Path(storage.removeprefix("sqlite:///")).is_file()
    return True  # a server URL: let optuna-dashboard say whether it answers


def commands(values: dict[str, str]) -> list[tuple[str, list[str], str]]:
    """(name, command, address) of each server to start."""
    host = values["host"]
    servers = [("MLflow UI",
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                 values["tracking.uri"], "--host", host, "--port", values["port"],
                 "--workers", "1"],
                f"http://{host}:{values['port']}")]
    if study_storage_exists(values["storage"]):
        # Beside this interpreter: the environment need not be activated.
        dashboard = Path(sys.executable).parent / "optuna-dashboard"
        servers.append(("Optuna dashboard",
                        [str(dashboard), values["storage"], "--host", host,
                         "--port", values["dashboard_port"]],
                        f"http://{host}:{values['dashboard_port']}"))
    return servers


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


def serve(values: dict[str, str]) -> None:
    servers = commands(values)
    ports = {int(values["port"]), int(values["dashboard_port"])}
    check_port_free(values["host"], int(values["port"]), "port", ports)
    if len(servers) > 1:
        check_port_free(values["host"], int(values["dashboard_port"]), "dashboard_port", ports)
    # SIGTERM (kill, docker stop, a CI timeout) stops the servers as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    processes = []
    try:
        for _, command, _ in servers:
            processes.append(subprocess.Popen(command, start_new_session=True))
        for name, _, address in servers:
            print(f"{name}: {address}", flush=True)
        if len(servers) == 1:
            print(f"(no study storage at {values['storage']}: no Optuna dashboard)", flush=True)
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop(processes)


def main(arguments: list[str] | None = None) -> None:
    try:
        serve(parse_arguments(sys.argv[1:] if arguments is None else arguments))
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
