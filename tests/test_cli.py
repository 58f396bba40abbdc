"""One command line for every command (`mlp_experiments/cli.py`): Hydra-style `KEY=VALUE`
overrides, `--help` listing the keys, `--cfg` printing the config, one message per mistake, and
the console scripts `mlp-<command>` beside `python -m mlp_experiments.<command>`."""

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mlp_experiments import cli, data, evaluate, fetch, plots, ui
from mlp_experiments.errors import UserError
from mlp_experiments.report import command as report
from mlp_experiments.sweep import command as sweep
from mlp_experiments.sweep import spec

BIN = Path(sys.executable).parent
COMMANDS = {"ui": ui, "evaluate": evaluate, "plots": plots, "sweep": sweep, "report": report,
            "fetch": fetch}

# Each command's keys as --help prints them: KEY, TYPE, DEFAULT.
KEYS = {
    "ui": [("ui.port", "int", "5000"), ("ui.dashboard_port", "int", "8080"),
           ("ui.host", "str", "127.0.0.1"), ("ui.storage", "str", "sqlite:///optuna.db"),
           ("tracking.uri", "str", "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlflow.db}")],
    "evaluate": [("evaluate.run_id", "str", "(required)"),
                 ("evaluate.out_dir", "str", "evaluation"),
                 ("tracking.uri", "str", "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlflow.db}")],
    "plots": [("plots.figure", "activations | schedules", "(required)"),
              ("plots.out_dir", "str", "figures"), ("plots.epochs", "int", "200")],
    "sweep": [("sweep.n_trials", "int | None", "null"), ("sweep.n_workers", "int", "1"),
              ("sweep.storage", "str | None", "null"), ("sweep.sampler", "str", "tpe")],
    "report": [("report.out_dir", "str", "outputs/reports"),
               ("sweep.n_trials", "int | None", "null"), ("sweep.storage", "str | None", "null")],
    "fetch": [("fetch.dataset", "mnist | fashion_mnist", "(required)"),
              ("fetch.cache_dir", "str", str(data.cache_dir()))],
}


def parse(name: str, *arguments: str):
    return cli.parse(COMMANDS[name].COMMAND, list(arguments))


def printed(capsys, name: str, *arguments: str) -> str:
    """What the command prints for --help or --cfg; it must end with exit code 0."""
    with pytest.raises(SystemExit) as exit:
        parse(name, *arguments)
    assert exit.value.code == 0
    return capsys.readouterr().out


def refused(name: str, *arguments: str) -> str:
    with pytest.raises(UserError) as error:
        parse(name, *arguments)
    return str(error.value)


# ---------------------------------------------------------------------------- --help, --cfg


@pytest.mark.parametrize("name", KEYS)
def test_help_lists_every_key_with_its_type_and_default(capsys, name):
    text = printed(capsys, name, "--help")
    assert text.startswith(f"usage: mlp-{name} [--help] [--cfg] [KEY=VALUE ...]")
    rows = {tuple(line.split()[:1]): line.split() for line in text.splitlines()
            if line.startswith("  ")}
    for key, kind, default in KEYS[name]:
        row = " ".join(rows[(key,)])
        assert row.startswith(f"{key} {kind} {default}"), row
    if name in ("sweep", "report"):
        assert "sweep=<name>" in text and "search_mlp" in text  # the sweeps to choose from
        assert "training override" in text


def test_every_key_of_a_schema_is_in_its_help(capsys):
    for name, module in COMMANDS.items():
        text = printed(capsys, name, "-h")
        assert all(f"  {key} " in text for key in cli.keys_of(module.COMMAND.schema)), name


def test_cfg_prints_the_config_the_overrides_give_and_runs_nothing(capsys, workdir,
                                                                   monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = OmegaConf.create(printed(capsys, "ui", "ui.port=5001", "--cfg"))
    assert cfg == {"ui": {"port": 5001, "dashboard_port": 8080, "host": "127.0.0.1",
                          "storage": "sqlite:///optuna.db"},
                   "tracking": {"uri": "sqlite:///mlflow.db"}}
    cfg = OmegaConf.create(printed(capsys, "evaluate", "--cfg", "evaluate.run_id=abc"))
    assert cfg.evaluate == {"run_id": "abc", "out_dir": "evaluation"}
    assert OmegaConf.create(printed(capsys, "plots", "--cfg", "plots.figure=schedules",
                                    "plots.epochs=20")).plots.epochs == 20
    assert list(workdir.iterdir()) == []  # no store opened, no figure drawn


def test_cfg_resolves_the_tracking_default_and_masks_passwords(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-the-environment.db")
    cfg = OmegaConf.create(printed(capsys, "evaluate", "--cfg"))
    assert cfg.tracking.uri == "sqlite:///from-the-environment.db"
    assert OmegaConf.is_missing(cfg.evaluate, "run_id")  # shown as ???; running needs it
    text = printed(capsys, "ui", "--cfg", "tracking.uri=postgresql://mlp:secret@db/mlflow")
    assert "secret" not in text and "postgresql://mlp:***@db/mlflow" in text


def test_cfg_of_a_sweep_prints_its_file_with_the_overrides(capsys):
    cfg = OmegaConf.create(printed(capsys, "sweep", "sweep=search_mlp", "sweep.n_trials=3",
                                   "trainer.epochs=2", "--cfg"))
    assert cfg.sweep.study_name == "search_mlp" and cfg.sweep.n_trials == 3
    assert cfg.sweep.space  # from sweeps/search_mlp.yaml
    assert cfg.training_overrides == ["trainer.epochs=2"]
    cfg = OmegaConf.create(printed(capsys, "report", "--cfg", "sweep=compare_losses",
                                   "report.out_dir=docs", "tracking=none"))
    assert cfg.report.out_dir == "docs" and cfg.sweep.sampler == "grid"
    assert cfg.training_overrides == ["tracking=none"]


# ---------------------------------------------------------------------------- values


def test_values_are_typed_by_the_schema():
    cfg, passed = parse("ui", "ui.port=5001", "ui.host='0.0.0.0'")
    assert (cfg.ui.port, cfg.ui.host, passed) == (5001, "0.0.0.0", [])
    cfg, _ = parse("plots", "plots.figure=activations")
    assert cfg.plots.figure is plots.FigureName.activations


def test_a_text_key_keeps_what_was_typed():
    """Hydra reads 1234e5 as a float; a run id is text, and stays the text typed."""
    assert parse("evaluate", "evaluate.run_id=1234e5")[0].evaluate.run_id == "1234e5"
    assert parse("evaluate", "evaluate.run_id=0123")[0].evaluate.run_id == "0123"


def test_sweep_and_report_pass_on_the_sweep_and_training_overrides():
    arguments = ["sweep=search_mlp", "sweep.n_trials=4", "trainer.epochs=2",
                 "report.out_dir=elsewhere", "tracking=none"]
    cfg, passed = parse("report", *arguments)
    assert cfg.report.out_dir == "elsewhere"
    assert passed == ["sweep=search_mlp", "sweep.n_trials=4", "trainer.epochs=2", "tracking=none"]
    assert parse("sweep", *arguments[:3])[1] == arguments[:3]


def test_sweep_settings_keep_hydras_types_on_their_way_to_the_sweep_file():
    name, overrides, training = spec.split_arguments([
        "sweep=search_mlp", "sweep.pruner_args={n_startup_trials: 2}",
        "sweep.storage='sqlite:///a b.db'", "sweep.timeout=1e3", "optimizer=adam"])
    loaded = spec.load_sweep(name, overrides)
    assert loaded.pruner_args == {"n_startup_trials": 2, "n_warmup_steps": 1}  # merged, as Hydra
    assert loaded.storage == "sqlite:///a b.db" and loaded.timeout == 1000.0
    assert training == ["optimizer=adam"]


def test_an_entry_of_a_dict_key_is_set_on_its_own():
    name, overrides, _ = spec.split_arguments(["sweep=search_mlp", "sweep.launcher=slurm",
                                               "sweep.slurm.mem_gb=4",
                                               "sweep.pruner_args.n_startup_trials=5"])
    parse("sweep", "sweep=search_mlp", "sweep.slurm.mem_gb=4")
    loaded = spec.load_sweep(name, overrides)
    assert loaded.slurm == {"mem_gb": 4}
    assert loaded.pruner_args == {"n_startup_trials": 5, "n_warmup_steps": 1}


# ---------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(("name", "argument", "closest"), [
    ("ui", "ui.prot=5001", "ui.port"),
    ("evaluate", "evaluate.runid=abc", "evaluate.run_id"),
    ("plots", "plots.epoch=3", "plots.epochs"),
    ("sweep", "sweep.n_trails=3", "sweep.n_trials"),
    ("report", "report.outdir=x", "report.out_dir"),
])
def test_an_unknown_key_names_the_nearest_and_the_keys(name, argument, closest):
    message = refused(name, "sweep=search_mlp", argument) if name in ("sweep", "report") \
        else refused(name, argument)
    key = argument.split("=")[0]
    assert message.startswith(f"Unknown key '{key}' for mlp-{name}. Did you mean '{closest}'?")
    assert all(k in message for k, _, _ in KEYS[name])


def test_a_key_of_no_section_is_unknown_where_nothing_is_passed_on():
    assert "Unknown key 'trainer.epochs' for mlp-ui" in refused("ui", "trainer.epochs=3")


@pytest.mark.parametrize(("name", "argument", "expected"), [
    ("ui", "ui.port=abc", "ui.port=abc: ui.port takes int (Value 'abc' of type 'str' could not "
                          "be converted to Integer)"),
    ("ui", "ui.dashboard_port=null", "ui.dashboard_port takes int"),
    ("plots", "plots.figure=bars", "plots.figure takes activations | schedules (Invalid value "
                                   "'bars', expected one of [activations, schedules])"),
    ("sweep", "sweep.n_workers=two", "sweep.n_workers=two: sweep.n_workers takes int"),
    ("report", "report.out_dir=[a,b]", "report.out_dir takes str"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(name, argument, expected):
    assert expected in refused(name, argument)


@pytest.mark.parametrize(("name", "argument", "nearest"), [
    ("ui", "port=5001", "ui.port"),
    ("ui", "dashboard_port=8081", "ui.dashboard_port"),
    ("ui", "storage=sqlite:///x.db", "ui.storage"),
    ("evaluate", "run_id=abc", "evaluate.run_id"),
    ("evaluate", "out=x", "evaluate.out_dir"),
    ("plots", "epochs=3", "plots.epochs"),
    ("fetch", "dataset=mnist", "fetch.dataset"),
])
def test_a_key_named_without_its_section_gets_the_key_it_means(name, argument, nearest):
    assert f"Did you mean '{nearest}'?" in refused(name, argument)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("argument", ["hydra.run.dir=elsewhere", "hydra/job_logging=disabled"])
def test_hydra_keys_are_refused_by_every_command_but_train(name, argument):
    message = refused(name, argument, "sweep=search_mlp")
    assert message.startswith(f"{argument}: hydra.* keys are mlp-train's alone")


@pytest.mark.parametrize(("argument", "message"), [
    ("ui.port=5001,5002", "one value per key"),
    ("+ui.port=5001", "mlp-ui's keys are fixed: set it with ui.port=VALUE"),
    ("~ui.host", "mlp-ui's keys are fixed"),
    ("ui.port=[1", "ui.port=[1: "),
    ("--port", "--port: mlp-ui takes --help, --cfg and KEY=VALUE overrides"),
    ("job", "'job' is not KEY=VALUE"),
])
def test_what_is_not_one_value_for_one_key_is_refused(argument, message):
    assert message in refused("ui", argument)


def test_a_required_key_is_asked_for():
    assert refused("evaluate") == ("evaluate.run_id has no value: mlp-evaluate "
                                   "evaluate.run_id=<value> (mlp-evaluate --help lists the keys).")
    assert "plots.figure has no value" in refused("plots", "plots.out_dir=x")


def test_the_commands_answer_a_mistake_with_one_line_and_exit_code_1(capsys):
    for main, arguments in ((ui.main, ["port=1"]), (plots.main, ["activations"]),
                            (sweep.main, ["sweep=search_mlp", "hydra.run.dir=x"]),
                            (report.main, ["sweep=search_mlp", "out=x"])):
        with pytest.raises(SystemExit) as exit:
            main(arguments)
        assert str(exit.value.code).startswith("error: ")


# ---------------------------------------------------------------------------- console scripts


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", COMMANDS)
def test_the_console_script_is_the_module(tmp_path, name):
    script = run(str(BIN / f"mlp-{name}"), "--help", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert script.stdout.startswith(f"usage: mlp-{name} ")
    module = run(sys.executable, "-m", f"mlp_experiments.{name}", "--help", cwd=tmp_path)
    assert module.stdout == script.stdout
    mistake = run(str(BIN / f"mlp-{name}"), "hydra.run.dir=x", cwd=tmp_path)
    assert mistake.returncode == 1 and mistake.stderr.startswith("error: hydra.run.dir=x: ")
    assert list(tmp_path.iterdir()) == []


def test_mlp_train_finds_its_config_and_takes_hydras_flags(tmp_path):
    """As an imported function Hydra's app would look for a `conf` package: the script runs
    the module, as `python -m` does."""
    composed = run(str(BIN / "mlp-train"), "--cfg", "job", "trainer.epochs=2", cwd=tmp_path)
    assert composed.returncode == 0, composed.stderr
    assert OmegaConf.create(composed.stdout).trainer.epochs == 2
    helped = run(str(BIN / "mlp-train"), "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "optimizer: adagrad, adam, adamw" in helped.stdout
    typo = run(str(BIN / "mlp-train"), "trainer.epochz=3", cwd=tmp_path)
    assert typo.returncode == 1 and "Did you mean 'trainer.epochs'?" in typo.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("override", "nearest"), [
    ("optimiser=adam", "Did you mean 'optimizer'?"),
    ("regularisation=dropout", "Did you mean 'regularization'?"),
    ("epochs=3", "Did you mean 'trainer.epochs'?"),
    ("lr=0.01", "Did you mean 'optimizer.lr'?"),
])
def test_a_top_level_typo_names_the_nearest_key_not_hydras_append_advice(override, nearest):
    from mlp_experiments.config.compose import check_overrides

    with pytest.raises(UserError) as error:
        check_overrides([override])
    assert nearest in str(error.value) and "+" not in str(error.value)


def test_a_sweep_setting_without_its_prefix_names_the_sweep_key():
    from mlp_experiments.sweep import spec

    with pytest.raises(UserError, match=r"n_trials=4: n_trials is a sweep setting: "
                                        r"sweep.n_trials=4"):
        spec.split_arguments(["sweep=search_mlp", "n_trials=4"])


def test_a_diverged_run_exits_non_zero_and_a_multirun_goes_on(tmp_path):
    """A script or a Slurm job tells success by the exit code: a diverged run is a failure;
    in a multirun the other jobs still run (Hydra's sweepers read its nan)."""
    import subprocess
    import sys

    quick = ["data=synthetic", "tracking=none", "trainer.epochs=2", "trainer.device=cpu"]
    run = subprocess.run([sys.executable, "-m", "mlp_experiments.train", *quick,
                          "optimizer.lr=1e12"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "error: the training diverged at epoch 1" in run.stderr
    multirun = subprocess.run([sys.executable, "-m", "mlp_experiments.train", "-m", *quick,
                               "optimizer.lr=1e12,0.1"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
    assert multirun.returncode == 0, multirun.stderr
    assert "completed after 2 epochs" in multirun.stdout + multirun.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_a_mistake_is_answered_before_torch_or_mlflow_is_imported(tmp_path, name):
    """Each command checks its keys first: a typo costs no torch import (seconds on a busy
    machine), so the answer comes at once."""
    script = (f"import sys\nfrom {COMMANDS[name].__name__} import main\n"
              f"try:\n    main(['{name}.no_such_key=1'])\nexcept SystemExit as stop:\n"
              f"    print(stop.code)\n"
              f"print('imported:', 'torch' in sys.modules, 'mlflow' in sys.modules)\n")
    result = run(sys.executable, "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "error: " in result.stdout and "no_such_key" in result.stdout, result.stdout
    assert "imported: False False" in result.stdout
