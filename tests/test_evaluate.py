"""`evaluate` rebuilds a run's network from its config.yaml and reads its weights with torch's
weights-only loader: right in a fresh process, and nothing a tracking store serves is unpickled."""

import contextlib
import os
import pathlib
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import free_port
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mlp_experiments import evaluate
from mlp_experiments.errors import UserError
from mlp_experiments.train import train

PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
SYNTHETIC_TEST_EXAMPLES = 400


class TouchPayload:
    """What a hostile store would serve: unpickled, it creates `marker`."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def log_run(synthetic_cfg, tracking_uri, request):
    """Train a synthetic run whose model is logged; return its result and run id."""

    def run(*overrides: str):
        result = train(synthetic_cfg("tracking.log_model=true", *overrides))
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(request.node.name)
        (logged,) = client.search_runs([experiment.experiment_id])
        return result, logged.info.run_id

    return run


def run_evaluate(run_id: str, tracking_uri: str, cwd: pathlib.Path):
    """The command in a fresh process, in an empty folder, with no inherited tracking URI."""
    cwd.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "mlp_experiments.evaluate", f"evaluate.run_id={run_id}",
         f"tracking.uri={tracking_uri}", f"evaluate.out_dir={cwd / 'evaluation'}"],
        cwd=cwd, env=environment, capture_output=True, text=True,
    )


def replace_artifact(tracking_uri: str, run_id: str, path: pathlib.Path, folder: str | None):
    MlflowClient(tracking_uri).log_artifact(run_id, str(path), folder)


def served_model(tracking_uri: str, run_id: str):
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    (model,) = [m for m in client.search_logged_models([experiment_id])
                if m.source_run_id == run_id]
    return model


def test_the_same_is_within_half_an_example():
    logged = float(torch.tensor(8168 / 10000, dtype=torch.float32))  # what the run records
    assert logged != 8168 / 10000
    assert evaluate.same_accuracy(8168 / 10000, logged, 10000)
    assert not evaluate.same_accuracy(8167 / 10000, logged, 10000)
    assert not evaluate.same_accuracy(8169 / 10000, logged, 10000)
    assert evaluate.same_accuracy(0.4, 0.4 + 0.5 / 400, 400)
    assert not evaluate.same_accuracy(0.4, 0.4 + 1 / 400, 400)
    assert not evaluate.same_accuracy(0.5, float("nan"), 400)  # a run that logged no test_acc


def test_a_fresh_process_evaluates_in_its_tracking_uri_and_creates_no_store(log_run,
                                                                            tracking_uri,
                                                                            tmp_path):
    result, run_id = log_run("trainer.epochs=2")
    cwd = tmp_path / "elsewhere"
    completed = run_evaluate(run_id, tracking_uri, cwd)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "the same as the run's logged" in completed.stdout
    assert "NOT" not in completed.stdout
    assert f"{result.history[-1]['test_acc']:.4f}" in completed.stdout
    assert [p.name for p in cwd.iterdir()] == ["evaluation"]  # no mlflow.db, no mlruns
    folder = cwd / "evaluation" / run_id
    assert (folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (folder / "per_class_accuracy.md").read_text()
    assert table.count("\n") == 12 and "| class 0 |" in table


@pytest.mark.parametrize("overrides", [
    ("data.normalize=computed",),
    ("model=scratch_mlp", "loss=scratch_cross_entropy", "data.loader=torch"),
    ("data.num_classes=2", "loss=bce", "trainer.batch_size=64"),
    # barely trained, so that bf16 rounding moves a few predictions: fp32 gets 0.1875, not 0.19
    ("trainer.precision=bf16", "optimizer.lr=0.001"),
], ids=["mlp", "scratch-torch-loader", "binary", "bf16"])
def test_the_reloaded_network_scores_the_logged_test_accuracy(log_run, tracking_uri, tmp_path,
                                                              overrides):
    result, run_id = log_run(*overrides)
    scores = evaluate.evaluate(run_id, tracking_uri, tmp_path)
    logged = result.history[-1]["test_acc"]
    assert scores["logged_test_acc"] == logged
    assert scores["test_examples"] == SYNTHETIC_TEST_EXAMPLES
    assert round(scores["test_acc"] * SYNTHETIC_TEST_EXAMPLES) == round(
        logged * SYNTHETIC_TEST_EXAMPLES)


def test_a_pickle_payload_in_the_served_model_is_never_loaded(log_run, tracking_uri, tmp_path,
                                                              monkeypatch):
    _, run_id = log_run()
    marker = tmp_path / "MARKER"
    armed = tmp_path / "armed"
    (armed / "data").mkdir(parents=True)
    torch.save(TouchPayload(marker), armed / "data" / "model.pth")
    (armed / "data" / "pickle_module_info.txt").write_text("pickle")
    model = served_model(tracking_uri, run_id)
    MlflowClient(tracking_uri).log_model_artifacts(model.model_id, str(armed))
    monkeypatch.setenv(PICKLE_SWITCH, "true")  # MLflow's default; main() turns it off

    scores = evaluate.evaluate(run_id, tracking_uri, tmp_path / "out")
    assert evaluate.same_accuracy(scores["test_acc"], scores["logged_test_acc"],
                                  scores["test_examples"])
    assert not marker.exists()

    evaluate.main([f"evaluate.run_id={run_id}", f"tracking.uri={tracking_uri}",
                   f"evaluate.out_dir={tmp_path}"])
    assert os.environ[PICKLE_SWITCH] == "false"
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
        mlflow.pyfunc.load_model(model.artifact_location)
    assert not marker.exists()

    monkeypatch.setenv(PICKLE_SWITCH, "true")  # the payload is real: pyfunc runs it
    with contextlib.suppress(Exception):
        mlflow.pyfunc.load_model(model.artifact_location)
    assert marker.exists()


def test_a_pickle_payload_as_state_dict_is_refused_in_a_fresh_process(log_run, tracking_uri,
                                                                      tmp_path):
    _, run_id = log_run()
    marker = tmp_path / "MARKER"
    payload = tmp_path / "state_dict.pt"
    torch.save({"0.weight": TouchPayload(marker)}, payload)
    replace_artifact(tracking_uri, run_id, payload, "model_state")

    completed = run_evaluate(run_id, tracking_uri, tmp_path / "elsewhere")
    assert completed.returncode == 1
    refusal = (f"error: Run {run_id}'s model_state/state_dict.pt is damaged or holds more than "
               f"tensors (UnpicklingError); torch's weights-only loader refused it.")
    assert refusal in completed.stderr
    assert not marker.exists()

    stored = MlflowClient(tracking_uri).download_artifacts(
        run_id, evaluate.STATE_DICT, str(tmp_path))
    torch.load(stored, weights_only=False)  # the payload is real: unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize(("write", "message"), [
    (lambda path: path.write_bytes(b"PK\x03\x04 cut short"), "is damaged or holds more than"),
    (lambda path: torch.save({"0.weight": torch.zeros(3, 3)}, path), "does not fit the network"),
], ids=["damaged", "another-network"])
def test_a_state_dict_that_is_damaged_or_of_another_network_is_refused(log_run, tracking_uri,
                                                                       tmp_path, write, message):
    _, run_id = log_run()
    replaced = tmp_path / "state_dict.pt"
    write(replaced)
    replace_artifact(tracking_uri, run_id, replaced, "model_state")
    with pytest.raises(UserError, match=message):
        evaluate.evaluate(run_id, tracking_uri, tmp_path)


@pytest.mark.parametrize(("section", "message"), [
    ("model", "is not one of our models"),
    ("model.dropout", "dropout"),
], ids=["root-target", "nested-target"])
def test_a_config_yaml_that_builds_other_objects_is_refused(log_run, tracking_uri, tmp_path,
                                                            section, message):
    _, run_id = log_run()
    marker = tmp_path / "MARKER"
    folder = tmp_path / "download"
    folder.mkdir()
    path = MlflowClient(tracking_uri).download_artifacts(run_id, "config.yaml", str(folder))
    cfg = OmegaConf.load(path)
    OmegaConf.update(cfg, section, {"_target_": "mlp_experiments.engine.os.makedirs",
                                    "name": str(marker)}, force_add=True)
    OmegaConf.save(cfg, path)
    replace_artifact(tracking_uri, run_id, pathlib.Path(path), None)
    with pytest.raises(UserError, match=message):
        evaluate.evaluate(run_id, tracking_uri, tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("!!python/object/apply:os.system ['touch {marker}']\n", "cannot be read as a config"),
    ("data: !!python/object/apply:os.system ['touch {marker}']\n", "cannot be read as a config"),
    ("- a\n- list\n", "is not a mapping"),
    ("data: {{name: fashion_mnist}}\nmodel: {{_target_: '${{oc.env:HOME}}'}}\n",
     "holds an interpolation at model._target_"),
    ("data: {{name: '${{model.x}}'}}\nmodel: {{x: 1}}\n", "holds an interpolation at data.name"),
    ("data: {{name: imagenet}}\n", "names no dataset we read"),
], ids=["python-tag", "nested-python-tag", "list", "target-interpolation",
        "name-interpolation", "unknown-dataset"])
def test_a_config_yaml_that_is_not_train_s_is_refused_in_one_message(
        log_run, tracking_uri, tmp_path, text, message):
    _, run_id = log_run()
    marker = tmp_path / "MARKER"
    path = tmp_path / "config.yaml"
    path.write_text(text.format(marker=marker))
    replace_artifact(tracking_uri, run_id, path, None)
    with pytest.raises(UserError, match=message):
        evaluate.evaluate(run_id, tracking_uri, tmp_path / "out")
    assert not marker.exists()


UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"  # the form of a run id, of no run


def test_an_unknown_run_and_a_run_without_weights_are_explained(synthetic_cfg, tracking_uri,
                                                                request, tmp_path):
    with pytest.raises(UserError, match="an MLflow run id is 32 hexadecimal digits"):
        evaluate.evaluate("0123abc", tracking_uri, tmp_path)  # answered before MLflow loads
    with pytest.raises(UserError, match=f"No MLflow run {UNKNOWN_RUN}"):
        evaluate.evaluate(UNKNOWN_RUN, tracking_uri, tmp_path)
    def crash(epoch, metrics):
        raise RuntimeError("the machine fell over")

    with pytest.raises(RuntimeError):
        train(synthetic_cfg(), hooks=(crash,))  # a run that never got to log its weights
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(request.node.name).experiment_id])
    with pytest.raises(UserError, match="has no model_state/state_dict.pt: it did not finish"):
        evaluate.evaluate(run.info.run_id, tracking_uri, tmp_path)


def test_a_missing_store_is_reported_not_created(workdir):
    with pytest.raises(UserError, match=r"No MLflow store at sqlite:///mlflow.db: pass"):
        evaluate.evaluate(UNKNOWN_RUN, "sqlite:///mlflow.db", workdir / "out")
    assert list(workdir.iterdir()) == []
    with pytest.raises(UserError, match="is unreachable"):
        evaluate.evaluate(UNKNOWN_RUN, f"http://127.0.0.1:{free_port()}", workdir / "out")
