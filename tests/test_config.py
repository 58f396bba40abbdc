import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mlp_experiments.config.compose import check_overrides, compose_config, with_values
from mlp_experiments.config.identity import config_hash, decides_the_result
from mlp_experiments.errors import UserError
from mlp_experiments.sweep.presets import preset_yaml


def error_for(*overrides: str) -> str:
    with pytest.raises(UserError) as error:
        check_overrides(list(overrides))
    return str(error.value)


def test_the_default_config_is_the_notes_concise_mlp(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it
    cfg = compose_config()
    assert cfg.data.name == "fashion_mnist" and cfg.model.hidden_sizes == [256]
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.5
    assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss"
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (5, 256)
    assert cfg.tracking.uri == "sqlite:///mlflow.db" and cfg.tracking.enabled


def test_public_override_names_compose():
    cfg = compose_config([
        "optimizer=adam", "scheduler=exponential", "trainer.epochs=3", "trainer.batch_size=64",
        "trainer.seed=4", "trainer.device=cpu", "optimizer.lr=0.01", "model.hidden_sizes=[64,32]",
        "model.dropout=0.2", "regularization.weight_decay=0.001", "data.root=/tmp/x",
        "data.val_size=100", "tracking.uri=sqlite:///x.db", "tracking.experiment=e",
    ])
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.01
    assert cfg.scheduler.gamma == 0.9 and cfg.model.hidden_sizes == [64, 32]


def test_unknown_key_names_the_key_the_nearest_one_and_all_valid_ones():
    message = error_for("trainer.epochz=3")
    assert "Unknown config key 'trainer.epochz'" in message
    assert "Did you mean 'trainer.epochs'?" in message
    assert "batch_size" in message and "seed" in message


def test_unknown_key_of_a_chosen_group_option_lists_that_option_keys():
    message = error_for("optimizer=adam", "optimizer.momentum=0.9")
    assert "optimizer.momentum" in message and "betas" in message and "eps" in message


def test_unknown_group_option_lists_the_available_ones():
    message = error_for("optimizer=adamm")
    assert "Could not find 'optimizer/adamm'" in message
    assert "adam" in message and "sgd" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.epochs=many", "could not be converted to Integer"),
        ("trainer.device=gpu", "expected one of [auto, cpu, cuda]"),
        ("model.activation=swish", "expected one of [relu, sigmoid"),
    ],
)
def test_wrong_type_or_value_names_the_key(override, expected):
    message = error_for(override)
    assert override.split("=")[0] in message and expected in message


def test_config_may_only_build_torch_or_project_classes():
    assert "is not allowed" in error_for("++model._target_=os.system")


def test_config_hash_ignores_where_results_go_but_not_what_decides_them():
    base = config_hash(compose_config(), "data")
    assert base == config_hash(compose_config(["tracking.uri=sqlite:///other.db"]), "data")
    assert base == config_hash(compose_config(["trainer.resume=true"]), "data")
    assert base != config_hash(compose_config(["optimizer.lr=0.1"]), "data")
    assert base != config_hash(compose_config(), "other data")
    for override in ("trainer.checkpoint_dir=/elsewhere", "data.root=/elsewhere"):
        assert base == config_hash(compose_config([override]), "data")


def test_a_best_preset_keeps_what_the_hash_keeps_and_drops_the_rest():
    not_the_result = ["tracking.uri=sqlite:///other.db", "trainer.resume=true",
                      "trainer.checkpoint_dir=/tmp/checkpoints", "data.root=/tmp/data"]
    text = preset_yaml(["optimizer=adam", "optimizer.lr=0.01", *not_the_result], "a comment")
    assert "checkpoint" not in text and "/tmp" not in text and "tracking" not in text
    assert all(not decides_the_result(o.split("=")[0]) for o in not_the_result)
    assert decides_the_result("optimizer.lr") and decides_the_result("trainer.epochs")
    assert "lr: 0.01" in text and "override /optimizer: adam" in text


def test_a_typo_on_the_command_line_is_answered_before_torch_is_imported():
    script = (
        "import sys\n"
        "from mlp_experiments.train import cli\n"
        "sys.argv = ['train', 'trainer.epochz=3']\n"
        "try:\n    cli()\nexcept SystemExit as exit:\n    print(exit.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "Did you mean 'trainer.epochs'?" in result.stdout
    assert "torch imported: False" in result.stdout


@pytest.mark.parametrize("values", [
    ["optimizer.lr=0.0123", "model.hidden_sizes=[512,256]", "model.dropout=0.25"],
    ["trainer.seed=7", "regularization.weight_decay=1e-05", "model.activation=tanh"],
    ["tracking.run_name=a b", "trainer.epochs=3", "optimizer.momentum=0.9"],
])
def test_values_applied_to_a_composed_config_give_what_composing_them_gives(values):
    fixed = ["optimizer=momentum", "scheduler=cosine", "data=synthetic"]
    fast = with_values(compose_config(fixed), values)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(compose_config([*fixed, *values]))


def test_values_for_a_key_the_config_lacks_are_refused():
    with pytest.raises(Exception, match="optimizer.lrr"):
        with_values(compose_config(), ["optimizer.lrr=0.1"])
