"""The `_target_` policy in-process: the allow-lists against torch, `policy.instantiate`, the
keys a config may hold, and the Hydra node (command-line overrides and composed config)."""

import inspect
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mlp_experiments import losses, models
from mlp_experiments.config import policy
from mlp_experiments.config.compose import check_command_line, check_overrides, compose_config
from mlp_experiments.config.registry import SCHEMAS, TARGET_SCHEMAS
from mlp_experiments.errors import UserError
from mlp_experiments.optim import ScratchSGD


def public_classes(module, base: type, exclude: tuple[type, ...] = ()) -> set[str]:
    return {f"{module.__name__}.{name}" for name, value in vars(module).items()
            if not name.startswith("_") and inspect.isclass(value) and issubclass(value, base)
            and value not in exclude}


def own_classes(module, base: type) -> set[str]:
    return {f"{module.__name__}.{name}" for name, value in vars(module).items()
            if inspect.isclass(value) and issubclass(value, base)
            and value.__module__ == module.__name__}


def test_the_allow_lists_are_exactly_the_classes_of_their_kind():
    scheduler = torch.optim.lr_scheduler
    assert policy.ALLOWED_TARGETS["optimizer"] == public_classes(
        torch.optim, torch.optim.Optimizer, (torch.optim.Optimizer,)
    ) | {"mlp_experiments.optim.ScratchSGD"}
    assert policy.ALLOWED_TARGETS["scheduler"] == public_classes(
        scheduler, scheduler.LRScheduler, (scheduler.LRScheduler,))
    assert policy.ALLOWED_TARGETS["loss"] == public_classes(
        torch.nn, torch.nn.modules.loss._Loss) | own_classes(losses, torch.nn.Module)
    serving = {"mlp_experiments.models.ScratchDropout", "mlp_experiments.models.ServingModel"}
    assert policy.ALLOWED_TARGETS["model"] == own_classes(models, torch.nn.Module) - serving
    for names in policy.ALLOWED_TARGETS.values():
        assert all(inspect.isclass(policy.allowed_class(name)) for name in names)
    assert policy.allowed_class("mlp_experiments.optim.ScratchSGD") is ScratchSGD


def test_each_schema_with_a_target_is_the_schema_of_that_target():
    for group, schemas in SCHEMAS.items():
        for schema in schemas.values():
            target = OmegaConf.structured(schema).get("_target_")
            if target is not None:
                assert TARGET_SCHEMAS[target] is schema
                assert target in policy.ALLOWED_TARGETS[group]
    assert all(any(target in allowed for allowed in policy.ALLOWED_TARGETS.values())
               for target in TARGET_SCHEMAS)


# ---------------------------------------------------------------------------- instantiate


def test_instantiate_builds_the_allowed_classes_of_every_group():
    cfg = compose_config(["optimizer=adam", "scheduler=step"])
    model = policy.instantiate(cfg.model, in_features=784, num_outputs=10)
    assert isinstance(model, models.MLP)
    assert isinstance(policy.instantiate(cfg.loss), torch.nn.CrossEntropyLoss)
    optimizer = policy.instantiate(cfg.optimizer)(model.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["betas"] == (0.9, 0.999)
    scheduler = policy.instantiate(cfg.scheduler)(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)


def test_instantiate_refuses_a_class_outside_the_group_allow_list():
    node = OmegaConf.create({"loss": {"_target_": "torch.optim.SGD"}}).loss
    with pytest.raises(UserError, match="loss._target_='torch.optim.SGD' is not allowed"):
        policy.instantiate(node)


def test_instantiate_refuses_a_node_that_is_not_a_group_root():
    node = OmegaConf.create({"_target_": "mlp_experiments.models.MLP", "hidden_sizes": [4]})
    with pytest.raises(UserError, match="not the root of a config"):
        policy.instantiate(node, in_features=3, num_outputs=2)


def test_instantiate_compares_the_resolved_object_with_the_allowed_class(monkeypatch, tmp_path):
    """An allowed name that resolves to another object (a module attribute replaced at run
    time) is refused, and that object is never called."""
    marker = tmp_path / "marker"
    policy.allowed_class("mlp_experiments.models.MLP")  # the class as imported

    def impostor(**kwargs):
        marker.mkdir()

    monkeypatch.setattr(models, "MLP", impostor)
    with pytest.raises(UserError, match="resolves to <function .*impostor.* not to the allowed"):
        policy.instantiate(compose_config().model, in_features=784, num_outputs=10)
    assert not marker.exists()


def test_instantiate_builds_nothing_inside_the_node(tmp_path):
    marker = tmp_path / "marker"
    node = OmegaConf.create({"optimizer": {
        "_target_": "torch.optim.SGD", "_partial_": True,
        "lr": {"_target_": "os.makedirs", "name": str(marker)},
    }}).optimizer
    with pytest.raises(UserError, match=r"optimizer.lr._target_: a config is data, not code"):
        policy.instantiate(node)
    assert not marker.exists()


# ---------------------------------------------------------------------------- keys and schemas


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["++optimizer._recursive_=false"], "optimizer._recursive_: a config is data, not code"),
        (["+model._args_=[1]"], "model._args_: a config is data"),
        (["+loss._convert_=all"], "loss._convert_: a config is data"),
        (["+_target_=os.system"], "_target_: a config is data"),
        (["+trainer._target_=os.system"], "trainer._target_: a config is data"),
        (["model.hidden_sizes=[{_target_:os.getpid}]"], "model.hidden_sizes[0]._target_"),
        (["+model.extra=1"], "model: Key 'extra' not in 'MLPConfig' (MLPConfig holds: "
                             "hidden_sizes, activation, dropout"),
        (["+trainer.extra=1"], "trainer: Key 'extra' not in 'TrainerConfig'"),
        (["+data.extra=1"], "data: Key 'extra' not in 'IdxDataConfig'"),
        (["+extra=1"], "extra: not a section of the training config"),
        (["optimizer._target_=torch.optim.NAdam"],  # sgd's momentum: not an NAdam key here
         "optimizer: Key 'momentum' not in 'OptimizerConfig' (OptimizerConfig holds: lr)"),
        (["scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.LinearLR"],
         "scheduler: Key 'step_size' not in 'SchedulerConfig'"),
        (["loss._target_=torch.optim.SGD"], "loss._target_='torch.optim.SGD' is not allowed"),
    ],
)
def test_keys_a_config_may_not_hold(overrides, message):
    with pytest.raises(UserError) as error:
        check_overrides(overrides)
    assert message in str(error.value)


def write_yaml(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return folder


def test_a_new_torch_optimizer_is_a_yaml_file(tmp_path):
    folder = write_yaml(tmp_path, "optimizer/nadam.yaml", """\
        defaults:
          - /schema/optimizer/any@_here_
          - _self_
        _target_: torch.optim.NAdam
        lr: 0.002
        """)
    cfg = check_overrides(["optimizer=nadam"], extra_dir=folder)
    model = policy.instantiate(cfg.model, in_features=784, num_outputs=10)
    optimizer = policy.instantiate(cfg.optimizer)(model.parameters())
    assert isinstance(optimizer, torch.optim.NAdam) and optimizer.defaults["lr"] == 0.002


# ---------------------------------------------------------------------------- the Hydra node


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+hydra.callbacks.x._target_=os.system", "Hydra instantiates its callbacks"),
        ("hydra/callbacks=foo", "overriding hydra/callbacks is not allowed"),
        ("+hydra.job.env_set.LD_PRELOAD=/tmp/x.so", "it sets the environment of the job"),
        ("hydra.job.env_copy=[HOME]", "overriding hydra.job.env_copy is not allowed"),
        ("hydra.job={env_set:{A:b}}", "it can set hydra.job.env_set"),
        ("hydra.launcher._target_=os.system", "choose a launcher with hydra/launcher"),
        ("hydra.sweeper._target_=os.system", "choose a sweeper with hydra/sweeper"),
        ("+hydra.launcher.x._target_=os.system", "keys starting with '_' make Hydra build"),
        ("+hydra.job_logging.root.level=INFO", "e.g. hydra/job_logging=disabled"),
        ("hydra.hydra_logging.version=1", "e.g. hydra/hydra_logging=disabled"),
        ("hydra.searchpath=[pkg://evil]", "add a config folder with --config-dir"),
        ("hydra.launcher.setup=[touch /tmp/x]", "submitit runs these shell commands"),
    ],
)
def test_overrides_of_hydra_keys_that_run_code_are_refused(override, message):
    with pytest.raises(UserError) as error:
        check_overrides([override])
    assert message in str(error.value)


@pytest.mark.parametrize("override", ["hydra/job_logging=disabled", "hydra/hydra_logging=none",
                                      "hydra.run.dir=elsewhere", "hydra.job.chdir=true",
                                      "hydra/launcher=basic", "hydra.verbose=true",
                                      "hydra/launcher=slurm", "hydra/launcher=submitit_slurm"])
def test_hydra_options_that_run_no_code_stay_allowed(override):
    check_overrides([override])


PRESETS = {  # name: (a file of the config folder, what it holds, what the test expects)
    "callbacks": ("experiment/evil.yaml", "hydra: {callbacks: {x: {_target_: os.getpid}}}",
                  "hydra.callbacks must stay empty"),
    "env_set": ("experiment/evil.yaml", "hydra: {job: {env_set: {LD_PRELOAD: /tmp/x.so}}}",
                "hydra.job.env_set must stay empty"),
    "launcher": ("experiment/evil.yaml", "hydra: {launcher: {_target_: os.system}}",
                 "hydra.launcher._target_='os.system' is not allowed"),
    "launcher_params": ("hydra/launcher/evil.yaml",
                        "_target_: hydra._internal.core_plugins.basic_launcher.BasicLauncher\n"
                        "x: {_target_: os.system}", "hydra.launcher.x._target_: a config is"),
    "launcher_setup": ("experiment/evil.yaml",
                       "defaults: [{override /hydra/launcher: slurm}]\n"
                       "hydra: {launcher: {setup: [touch /tmp/x]}}",
                       "hydra.launcher.setup: submitit runs these shell commands"),
    "handler": ("experiment/evil.yaml",
                "hydra: {job_logging: {handlers: {x: {class: logging.os.system}}}}",
                "hydra.job_logging.handlers.x.class='logging.os.system' is not allowed"),
    "factory": ("hydra/hydra_logging/evil.yaml", "filters: {x: {'()': os.getpid}}",
                "hydra.hydra_logging.filters.x.(): a '()' factory is code"),
    "stream": ("experiment/evil.yaml",
               "hydra: {job_logging: {handlers: {x: {stream: 'ext://os.environ'}}}}",
               "'ext://os.environ': only ext://sys.stdout or ext://sys.stderr"),
}


@pytest.mark.parametrize("name", PRESETS)
def test_the_composed_hydra_node_of_a_config_folder_is_checked(tmp_path, name):
    file, body, message = PRESETS[name]
    package = "# @package _global_\n" if file.startswith("experiment") else ""
    folder = write_yaml(tmp_path, file, f"{package}{body}\n")
    group = str(Path(file).parent)
    with pytest.raises(UserError) as error:
        check_overrides([f"{group}=evil"], extra_dir=folder)
    assert message in str(error.value)


def test_logging_configs_of_the_standard_library_pass(tmp_path):
    folder = write_yaml(tmp_path, "experiment/logs.yaml", """\
        # @package _global_
        hydra:
          job_logging:
            formatters: {plain: {class: logging.Formatter, format: '%(message)s'}}
            handlers:
              console: {class: logging.StreamHandler, stream: 'ext://sys.stderr'}
              file: {class: logging.handlers.RotatingFileHandler, filename: run.log}
        """)
    check_overrides(["experiment=logs"], extra_dir=folder)


def test_every_value_of_the_sweeper_params_of_a_preset_is_checked(tmp_path):
    folder = write_yaml(tmp_path, "experiment/sweepy.yaml", """\
        # @package _global_
        hydra:
          sweeper:
            params:
              model.dropout: 0.1,{_target_:os.getpid}
        """)
    check_overrides(["experiment=sweepy"], extra_dir=folder)  # the job of a plain run is fine
    with pytest.raises(UserError, match=r"model.dropout._target_: a config is data"):
        check_command_line(["experiment=sweepy"], extra_dir=folder)


def test_an_allowed_class_the_installed_torch_lacks_is_named_not_a_traceback(monkeypatch):
    policy.allowed_class.cache_clear()
    monkeypatch.delattr(torch.nn, "HuberLoss")
    try:
        with pytest.raises(UserError, match="torch.nn.HuberLoss does not exist in the installed"):
            policy.allowed_class("torch.nn.HuberLoss")
    finally:
        policy.allowed_class.cache_clear()
