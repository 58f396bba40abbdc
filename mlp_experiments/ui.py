"""`python -m mlp_experiments.ui [port=5000] [dashboard_port=8080] [host=127.0.0.1]
[tracking.uri=sqlite:///mlflow.db] [storage=sqlite:///optuna.db]`

Starts the MLflow UI on the project's tracking store and, when a study storage exists,
optuna-dashboard beside it; prints both addresses; Ctrl-C stops both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlp_experiments.config import TrackingConfig, UserError

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


def check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise UserError(
                f"Port {port} on {host} is in use: pass another, e.g. {option}={port + 1}."
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
                 values["tracking.uri"], "--host", host, "--port", values["port"]],
                f"http://{host}:{values['port']}")]
    if study_storage_exists(values["storage"]):
        dashboard = shutil.which("optuna-dashboard") or "optuna-dashboard"
        servers.append(("Optuna dashboard",
                        [dashboard, values["storage"], "--host", host,
                         "--port", values["dashboard_port"]],
                        f"http://{host}:{values['dashboard_port']}"))
    return servers


def serve(values: dict[str, str]) -> None:
    check_port_free(values["host"], int(values["port"]), "port")
    servers = commands(values)
    if len(servers) > 1:
        check_port_free(values["host"], int(values["dashboard_port"]), "dashboard_port")
    processes = [subprocess.Popen(command) for _, command, _ in servers]
    for name, _, address in servers:
        print(f"{name}: {address}", flush=True)
    if len(servers) == 1:
        print(f"(no study storage at {values['storage']}: no Optuna dashboard)", flush=True)
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def main(arguments: list[str] | None = None) -> None:
    try:
        serve(parse_arguments(sys.argv[1:] if arguments is None else arguments))
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
