"""A newcomer's first hour, timed: what the README tells them to type, on a fresh clone.

    uv run python benchmarks/first_hour.py

Clones this repository into a temporary folder and, there, as a user would: `uv sync` (with
this machine's uv cache: a cold one first downloads the ~3.3 GB of CUDA wheels), the README's
first command (`uv run mlp-train`), then `uv run mlp-ui` until the UI's server returns that run;
then the five mistakes a new user made (issue 21), each timed, with the key its message names.
Prints one line per step and what it found. Nothing is written outside the temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (the command a new user typed, the key its message must name)
MISTAKES = [
    (["mlp-train", "optimiser=adam"], "optimizer"),
    (["mlp-train", "regularisation=dropout"], "regularization"),
    (["mlp-train", "epochs=3"], "trainer.epochs"),
    (["mlp-train", "lr=0.01"], "optimizer.lr"),
    (["mlp-sweep", "sweep=search_mlp", "n_trials=4"], "sweep.n_trials"),
]
ANSWER_TARGET_S = 2.0
# the clone's own environment and store, whatever this process was started with
ENV = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}


def step(name: str, command: list[str], clone: Path) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=clone, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - started
    print(f"{name:<34} {took:7.1f} s  exit {done.returncode}", flush=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    done.seconds = took
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ui_shows(port: int, run_id: str) -> bool:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.load(answer)["run"]["info"]["run_id"] == run_id
    except (OSError, ValueError, KeyError):
        return False


def time_to_ui(clone: Path, run_id: str) -> float:
    port, dashboard = free_port(), free_port()
    started = time.perf_counter()
    # its own process group, stopped as a terminal's Ctrl-C stops it (uv passes it on)
    ui = subprocess.Popen(["uv", "run", "mlp-ui", f"ui.port={port}",
                           f"ui.dashboard_port={dashboard}"], cwd=clone, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        while not ui_shows(port, run_id):
            if ui.poll() is not None or time.perf_counter() - started > 300:
                sys.exit("mlp-ui ended, or did not show the run within 5 minutes")
            time.sleep(0.2)
        return time.perf_counter() - started
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(timeout=60)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="first-hour-") as folder:
        clone = Path(folder) / "mlp-experiments"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        print(f"a fresh clone of {REPO} in {clone}\n", flush=True)
        env_sync = step("uv sync", ["uv", "sync", "--frozen"], clone)
        trained = step("uv run mlp-train (the README's first)", ["uv", "run", "mlp-train"], clone)
        output = trained.stdout + trained.stderr
        run_id = re.search(r"MLflow run ([0-9a-f]{32})", output).group(1)
        accuracy = re.findall(r"test_acc (\d\.\d+)", output)[-1]
        page_s = time_to_ui(clone, run_id)
        print(f"{'uv run mlp-ui, until it shows the run':<34} {page_s:7.1f} s")
        first_run_s = env_sync.seconds + trained.seconds + page_s
        print(f"\nfrom clone to the first run's page: {first_run_s:.0f} s (test accuracy "
              f"{accuracy}, run {run_id})\n")
        slow = wrong = 0
        for command, key in MISTAKES:
            started = time.perf_counter()
            done = subprocess.run(["uv", "run", *command], cwd=clone, env=ENV,
                                  capture_output=True, text=True)
            took = time.perf_counter() - started
            message = (done.stdout + done.stderr).strip().splitlines()
            names_key = any(f"'{key}'" in line or f" {key}" in line for line in message)
            slow += took >= ANSWER_TARGET_S
            wrong += not names_key or done.returncode == 0
            print(f"{' '.join(command):<34} {took:5.2f} s  names {key}: "
                  f"{'yes' if names_key else 'NO'}  | {message[-1][:110] if message else ''}")
        print(f"\nmistakes answered in under {ANSWER_TARGET_S:.0f} s: {len(MISTAKES) - slow}/"
              f"{len(MISTAKES)}; naming the right key: {len(MISTAKES) - wrong}/{len(MISTAKES)}")
        readme = (REPO / "README.md").read_text().splitlines()
        print(f"README.md: {len(readme)} lines")


if __name__ == "__main__":
    main()
