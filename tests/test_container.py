"""The image built and run for real with podman: docker/Dockerfile on a Debian base made from the
apt mirror, training in a container that records into a mounted folder the host reads back, and
sweep worker containers on the host's PostgreSQL and MLflow server, one of them killed mid-trial.

The containers share the host's network (loopback servers are reachable, as the compose file's
services reach theirs by name) and see their work folder at the same path as the host, so the
artifact paths a run records are true on both sides."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FASHION_DIR, worker_of
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_scaling import check_study, frozen_running_trial, sweep_yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/mlp-experiments:test"
IMAGE_USER = 1000

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(shutil.which("podman") is None or shutil.which("debootstrap") is None,
                       reason="apt-get install podman debootstrap"),
]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def inspect(image: str, template: str) -> str | None:
    """What podman says of the image by a Go template; None where there is no such image."""
    found = subprocess.run(["podman", "image", "inspect", "--format", template, image],
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


@pytest.fixture(scope="session")
def image() -> str:
    """The project's image, built by docker/build.sh (which makes the Debian base once). The
    image it replaces is removed with its layers: every run on a new lock or checkout would
    otherwise leave ~7 GB behind, until a build runs out of disk."""
    replaced = inspect(IMAGE, "{{.Id}}")
    build = subprocess.run([str(ROOT / "docker" / "build.sh"), IMAGE], capture_output=True,
                           text=True, timeout=1800)
    output = build.stdout[-3000:] + build.stderr[-3000:]
    if build.returncode != 0 and "no space left on device" in output:
        storage = subprocess.run(["podman", "info", "--format", "{{.Store.GraphRoot}}"],
                                 capture_output=True, text=True).stdout.strip()
        free_gb = shutil.disk_usage(storage).free / 1e9
        pytest.skip(f"the image build ran out of disk in {storage} ({free_gb:.1f} GB free): it "
                    "needs about 14 GB while it writes its 6.5 GB dependency layer; free some "
                    "(podman image prune) and rerun")
    assert build.returncode == 0, output
    if replaced not in (None, inspect(IMAGE, "{{.Id}}")):
        subprocess.run(["podman", "rmi", replaced], capture_output=True)
    return IMAGE


def work_folder(path: Path) -> Path:
    """A folder the image's non-root user can write: what a user mounts as the work folder."""
    path.mkdir(parents=True)
    os.chown(path, IMAGE_USER, IMAGE_USER)
    return path


def container(image: str, *arguments: str, name: str | None = None) -> list[str]:
    """docker/run.sh of the image (the working folder mounted at its own path, a read-only root
    file system, so the container can write nowhere else), one thread per worker."""
    named = ["--name", name, "--hostname", name] if name else []
    return [str(ROOT / "docker" / "run.sh"), *named, "-e", "OMP_NUM_THREADS=1", image,
            *arguments]


def test_training_in_a_container_records_a_complete_run_the_host_reads_back(image, tmp_path):
    work = work_folder(tmp_path / "work")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = subprocess.run(container(image, "mlp_experiments.train", "data=synthetic",
                                      "trainer.epochs=2", f"tracking.uri={uri}"),
                            capture_output=True, text=True, timeout=600, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mlp-experiments").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.epochs"] == "2"
    assert run.data.tags["git_commit"] == head_commit()  # the image knows what it was built from
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots", "model_state"} <= artifacts
    weights = Path(run.info.artifact_uri.removeprefix("file://")) / "model_state"
    assert weights.is_dir() and weights.stat().st_uid == IMAGE_USER  # the image's user wrote it


def test_an_image_rebuilt_at_another_commit_records_that_commit(image):
    """Rebuilt with only the commit changed (a commit of docs or tests), every layer but the
    commit's comes from the cache: the image must still say the new commit (podman reused the
    cached ENV layer, and the image recorded the commit of the build before)."""
    rebuilt = f"{image}-rebuilt"
    for commit in ("0" * 40, "1" * 40):
        try:
            build = subprocess.run([str(ROOT / "docker" / "build.sh"), rebuilt, "--build-arg",
                                    f"GIT_COMMIT={commit}"], capture_output=True, text=True,
                                   timeout=1800)
            assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
            environment = inspect(rebuilt, "{{range .Config.Env}}{{println .}}{{end}}").split()
            assert f"MLP_EXPERIMENTS_GIT_COMMIT={commit}" in environment
        finally:  # with the layers of its commit, which no other image uses
            subprocess.run(["podman", "rmi", "--force", rebuilt], capture_output=True)


def worker_container(image: str, work: Path, name: str, index: int, postgres: str,
                     tracking_server: str) -> subprocess.Popen:
    sweep = work / f"{name}.yaml"
    arguments = ["mlp_experiments.sweep", f"sweep={sweep}", f"sweep.storage={postgres}/postgres",
                 "data=synthetic", "trainer.device=cpu", "tracking.log_model=false",
                 f"tracking.uri={tracking_server}", f"tracking.experiment={name}",
                 f"trainer.checkpoint_dir={work / 'checkpoints'}"]
    return subprocess.Popen(container(image, *arguments, name=f"{name}-{index}"), cwd=work,
                            stdout=subprocess.DEVNULL,
                            stderr=open(work.parent / f"worker{index}.log", "w"))


def signal_container(trial, signal_name: str) -> None:
    """Signal the container that runs the trial: its hostname is its name."""
    subprocess.run(["podman", "kill", "--signal", signal_name, worker_of(trial).host], check=True,
                   capture_output=True)


def test_a_sweep_worker_container_killed_mid_trial_loses_nothing(image, postgres,
                                                                 tracking_server, tmp_path):
    name, n_trials = "container_fault", 4
    work = work_folder(tmp_path / "work")
    sweep_yaml(work, name, ", data.train_size=20000, trainer.epochs=6", n_trials=n_trials)
    workers = [worker_container(image, work, name, index, postgres, tracking_server)
               for index in range(2)]
    victim = frozen_running_trial(f"{postgres}/postgres", name,
                                  lambda trial: signal_container(trial, "STOP"),
                                  lambda trial: signal_container(trial, "CONT"))
    signal_container(victim, "KILL")

    codes = sorted(worker.wait(timeout=600) for worker in workers)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("worker*.log")))
    assert codes[0] == 0 and codes[1] != 0, logs  # the survivor finished, the victim was killed
    trials = check_study(postgres, tracking_server, name, n_trials)  # no child run left RUNNING
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL and "outcome" not in killed.user_attrs
    retry = [t for t in trials if t.state == TrialState.COMPLETE and t.params == killed.params]
    assert len(retry) == 1  # run again, once, by the surviving container
    assert len(trials) == n_trials + 1


@pytest.fixture
def docker_api(tmp_path):
    """`podman system service` serving the Docker API on a socket of its own; yields the
    DOCKER_HOST a Docker client points at it."""
    socket = tmp_path / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert time.monotonic() < deadline and service.poll() is None, "no podman service"
        time.sleep(0.2)
    yield f"unix://{socket}"
    service.terminate()
    service.wait(timeout=30)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="apt-get install docker-compose")
def test_the_compose_train_service_runs_through_podman_against_the_hosts_stack(
        image, docker_api, tracking_server, tmp_path):
    """The compose file's own `train` service (its entry point, its overrides, FashionMNIST
    from DATA_DIR) run by docker-compose through podman's Docker API, recording into the
    host's MLflow server. The
    sandbox's differences come from an override file: the test's image, the host's network
    (where the server is), ulimits. The stack's postgres and mlflow services are not started:
    their images cannot be pulled here."""
    if not FASHION_DIR.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist")
    work = work_folder(tmp_path / "work")
    project = f"mlp-test-{os.getpid()}"
    env_file = tmp_path / ".env"
    env_file.write_text(f"POSTGRES_PASSWORD=unused\nDATA_DIR={FASHION_DIR}\n"
                        f"COMPOSE_PROJECT_NAME={project}\n")
    override = tmp_path / "sandbox.yaml"
    override.write_text(f"""
services:
  train:
    image: {image}
    network_mode: host
    ulimits: {{nofile: {{soft: 20000, hard: 20000}}, nproc: {{soft: 4096, hard: 4096}}}}
    environment: {{MLFLOW_TRACKING_URI: "{tracking_server}"}}
    volumes: ["{work}:{work}"]
    working_dir: "{work}"
""")
    compose = ["docker-compose", "-f", str(ROOT / "docker" / "compose.yaml"), "-f",
               str(override), "--env-file", str(env_file)]
    environment = {**os.environ, "DOCKER_HOST": docker_api}
    try:
        result = subprocess.run(
            [*compose, "run", "--rm", "--no-deps", "train", "trainer.epochs=1",
             "trainer.device=cpu", f"tracking.experiment={project}"],
            capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        subprocess.run([*compose, "down", "--volumes"], capture_output=True, env=environment,
                       cwd=tmp_path, timeout=120)

    client = MlflowClient(tracking_server)
    (run,) = client.search_runs([client.get_experiment_by_name(project).experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.root"] == "/data"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]
    assert "model_state" in {a.path for a in client.list_artifacts(run.info.run_id)}
