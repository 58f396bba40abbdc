"""A config is data, never code; bad input is answered before any work; Hydra's command line.

Every bypass is run for real, as a user would run it: the command in a subprocess, in a
temporary folder, with a payload that creates a marker there when it runs. Each must fail with
a message that names the problem, and leave the marker uncreated.
"""

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

QUICK = ["data=synthetic", "trainer.epochs=1", "tracking=none", "trainer.device=cpu"]
MAKEDIRS = "mlp_experiments.engine.os.makedirs"  # os.makedirs, through a package module


def command(module: str, *arguments: str, cwd: Path, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", f"mlp_experiments.{module}", *arguments], cwd=cwd,
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )


def assert_refused(result, *words: str, marker: Path) -> str:
    output = result.stdout + result.stderr
    assert not marker.exists(), output
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, output
    return output


class MkdirPayload:
    """Unpickled, it creates its folder: the payload of a malicious pickle file."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------- training overrides


def test_a_nested_target_in_model_dropout_is_not_built(tmp_path):
    marker = tmp_path / "marker"
    override = f"model.dropout={{_target_:{MAKEDIRS},name:'{marker}'}}"
    assert_refused(command("train", *QUICK, override, cwd=tmp_path),
                   "model.dropout._target_", "a config is data, not code", marker=marker)


def test_a_forced_key_that_torch_loads_a_pickle_payload_is_not_built(tmp_path):
    marker, payload = tmp_path / "marker", tmp_path / "evil.pt"
    payload.write_bytes(pickle.dumps(MkdirPayload(marker)))
    override = (f"+model.extra={{_target_:mlp_experiments.engine.torch.load,f:'{payload}',"
                f"weights_only:false}}")
    assert_refused(command("train", *QUICK, override, cwd=tmp_path),
                   "model.extra._target_", marker=marker)
    import torch

    with pytest.raises(RuntimeError, match="magic number"):  # after it ran the payload:
        torch.load(payload, weights_only=False)
    assert marker.is_dir()  # the payload is real


@pytest.mark.parametrize(("group", "allowed"), [("model", "mlp_experiments.models.MLP"),
                                               ("optimizer", "torch.optim.AdamW"),
                                               ("loss", "torch.nn.MSELoss")])
def test_os_system_through_a_package_module_is_refused_by_our_allow_list(tmp_path, group,
                                                                         allowed):
    """(Hydra's own blocklist would stop os.system, after the data was loaded: ours names the
    classes a group may build, before torch is imported.)"""
    marker = tmp_path / "marker"
    result = command("train", *QUICK, f"{group}._target_=mlp_experiments.ui.os.system",
                     f"+{group}.command='mkdir {marker}'", cwd=tmp_path)
    output = assert_refused(result, f"{group}._target_='mlp_experiments.ui.os.system' is not "
                                    f"allowed", marker=marker)
    assert allowed in output


# ---------------------------------------------------------------------------- the Hydra node


def test_hydra_callbacks_are_not_built(tmp_path):
    marker = tmp_path / "marker"
    result = command("train", *QUICK, f"+hydra.callbacks.x={{_target_:{MAKEDIRS}}}",
                     f"+hydra.callbacks.x.name='{marker}'", cwd=tmp_path)
    assert_refused(result, "overriding hydra.callbacks.x is not allowed", marker=marker)


def test_hydra_env_set_is_refused(tmp_path):
    marker = tmp_path / "marker.log"  # torch opens this log file when it is imported
    result = command("train", *QUICK, f"+hydra.job.env_set.TORCH_LOGS_OUT='{marker}'",
                     cwd=tmp_path)
    assert_refused(result, "overriding hydra.job.env_set.TORCH_LOGS_OUT is not allowed",
                   marker=marker)
    subprocess.run([sys.executable, "-c", "import torch"], cwd=tmp_path, check=True,
                   env={**os.environ, "TORCH_LOGS_OUT": str(marker)})
    assert marker.exists()  # the variable is real: importing torch, as a job does, creates it


def test_a_logging_factory_from_a_config_folder_is_not_run(tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "extra_conf"
    write_yaml(folder / "hydra" / "job_logging" / "evil.yaml", f"""\
        version: 1
        formatters:
          evil:
            (): {MAKEDIRS}
            name: {marker}
        handlers:
          console: {{class: logging.StreamHandler, formatter: evil}}
        root: {{handlers: [console]}}
        """)
    result = command("train", f"--config-dir={folder}", *QUICK, "hydra/job_logging=evil",
                     cwd=tmp_path)
    assert_refused(result, "hydra.job_logging.formatters.evil.()", "factory", marker=marker)


def site_payload(folder: Path, marker: Path) -> str:
    """A .pth file that `site.addsitedir(folder)` runs, and the quoted handler that calls it:
    oc.decode turns the string into a `()` factory after the unresolved config was checked."""
    (folder / "zz.pth").write_text(f"import os; os.mkdir({str(marker)!r})\n")
    return f"'${{oc.decode:''{{\\(\\): site.addsitedir, sitedir: {folder}}}''}}'"


def test_a_decoded_logging_factory_from_a_config_folder_is_not_run(tmp_path):
    marker, folder = tmp_path / "marker", tmp_path / "extra_conf"
    write_yaml(folder / "hydra" / "job_logging" / "evil.yaml", f"""\
        version: 1
        handlers:
          h: {site_payload(tmp_path, marker)}
        root: {{handlers: [h]}}
        """)
    result = command("train", "-cd", str(folder), "hydra/job_logging=evil", *QUICK, cwd=tmp_path)
    assert_refused(result, "hydra.job_logging", "${oc.decode:...} is refused", marker=marker)
    site = subprocess.run([sys.executable, "-c", f"import site; site.addsitedir('{tmp_path}')"])
    assert site.returncode == 0 and marker.is_dir()  # the payload is real
    shutil.rmtree(marker)
    result = command("train", "-m", "-cd", str(folder), "hydra/job_logging=evil", *QUICK,
                     cwd=tmp_path)
    assert_refused(result, "${oc.decode:...} is refused", marker=marker)


def test_a_decoded_hydra_logging_factory_in_a_primary_config_is_not_run(tmp_path):
    marker, folder = tmp_path / "marker", tmp_path / "primary"
    write_yaml(folder / "evil.yaml", f"""\
        hydra:
          hydra_logging:
            version: 1
            handlers:
              h: {site_payload(tmp_path, marker)}
            root: {{handlers: [h]}}
        """)
    result = command("train", "-cp", str(folder), "-cn", "evil", cwd=tmp_path)
    assert_refused(result, "hydra.hydra_logging", "${oc.decode:...} is refused", marker=marker)


@pytest.mark.parametrize("factory", [
    "{\\(\\): os.makedirs, name: MARKER}",
    "{\\(\\): builtins.open, file: MARKER, mode: w}",
    "{\\(\\): shutil.copyfile, src: SOURCE, dst: MARKER}",
])
def test_decoded_factories_of_the_standard_library_are_not_run(tmp_path, factory):
    marker, source = tmp_path / "marker", tmp_path / "source"
    source.write_text("x")
    factory = factory.replace("MARKER", str(marker)).replace("SOURCE", str(source))
    folder = write_yaml(tmp_path / "conf" / "hydra" / "job_logging" / "evil.yaml", f"""\
        version: 1
        formatters:
          f: '${{oc.decode:''{factory}''}}'
        root: {{handlers: []}}
        """).parents[2]
    result = command("train", "-cd", str(folder), "hydra/job_logging=evil", *QUICK, cwd=tmp_path)
    assert_refused(result, "${oc.decode:...} is refused", marker=marker)


def test_a_logging_factory_reached_through_a_node_interpolation_is_not_run(tmp_path):
    """No resolver at all: the handler is a plain interpolation of a mapping that holds a
    factory elsewhere in the Hydra node. Only the resolved config shows it."""
    marker = tmp_path / "marker"
    folder = write_yaml(tmp_path / "conf" / "experiment" / "evil.yaml", f"""\
        # @package _global_
        defaults:
          - override /hydra/launcher: slurm
        hydra:
          launcher:
            additional_parameters:
              x: {{"()": os.makedirs, name: {marker}}}
          job_logging:
            version: 1
            handlers:
              h: ${{hydra.launcher.additional_parameters.x}}
            root: {{handlers: [h]}}
        """).parents[1]
    result = command("train", "-cd", str(folder), "experiment=evil", *QUICK, cwd=tmp_path)
    assert_refused(result, "hydra.job_logging.handlers.h.()", "factory", marker=marker)


@pytest.mark.parametrize(("entry", "message"), [
    ("handlers: {h: {class: logging.handlers.SocketHandler, host: localhost, port: 9}}",
     "handlers.h: host, port is not allowed here"),
    ("handlers: {h: {class: logging.handlers.HTTPHandler}}",
     "handlers.h.class='logging.handlers.HTTPHandler' is not allowed"),
    ("handlers: {h: {class: logging.StreamHandler, stream: 'ext://os.system'}}",
     "handlers.h.stream='ext://os.system': only ext://sys.stdout or ext://sys.stderr"),
    ("handlers: {h: {class: logging.StreamHandler, stream: 'cfg://x'}}", "'cfg://x': only"),
    ("filters: {f: {'()': os.makedirs}}", "filters.f.(): a '()' factory is code"),
    ("handlers: {h: {class: logging.StreamHandler, '.': {x: 1}}}", "handlers.h: . is not allowed"),
])
def test_logging_configs_build_only_the_allowed_classes(entry, message):
    from mlp_experiments.config.hydra_node import check_logging
    from mlp_experiments.errors import UserError

    with pytest.raises(UserError) as error:
        check_logging("hydra.job_logging", OmegaConf.to_container(OmegaConf.create(
            f"{{version: 1, {entry}}}")))
    assert message in str(error.value)


@pytest.mark.parametrize(("job_logging", "hydra_logging"), [
    ("default", "default"), ("stdout", "hydra_debug"), ("disabled", "disabled"), ("none", "none")])
def test_hydras_own_logging_configs_pass(tmp_path, job_logging, hydra_logging):
    result = command("train", f"hydra/job_logging={job_logging}",
                     f"hydra/hydra_logging={hydra_logging}", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_preset_of_a_config_folder_passes_the_same_checks(tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "extra_conf"
    write_yaml(folder / "experiment" / "evil.yaml", f"""\
        # @package _global_
        model:
          dropout: {{_target_: {MAKEDIRS}, name: {marker}}}
        """)
    result = command("train", f"--config-dir={folder}", *QUICK, "experiment=evil", cwd=tmp_path)
    assert_refused(result, "model.dropout._target_", marker=marker)


# ---------------------------------------------------------------------------- Slurm settings


def stand_in_sbatch(tmp_path: Path) -> dict:
    """A PATH whose `sbatch` runs its script as a shell does, as a scheduler shim might: a
    setting that reaches the script as a line of its own would run there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text('#!/bin/sh\nfor a; do script="$a"; done\nbash "$script" >/dev/null 2>&1\n'
                      'echo "Submitted batch job 1"\n')
    sbatch.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("key", ["comment", "partition", "qos", "account"])
def test_a_launcher_setting_with_a_newline_never_reaches_the_batch_script(tmp_path, key):
    marker = tmp_path / "marker"
    result = command("train", "-m", "hydra/launcher=slurm",
                     f"hydra.launcher.{key}='x\ntouch {marker} #'", *QUICK, cwd=tmp_path,
                     env=stand_in_sbatch(tmp_path))
    assert_refused(result, f"hydra.launcher.{key}=", "control character", marker=marker)


def test_a_sweep_files_slurm_setting_with_a_newline_never_reaches_the_batch_script(tmp_path):
    marker = tmp_path / "marker"
    text = EVIL_SWEEP.format(section=OmegaConf.to_yaml(
        {"launcher": "slurm", "slurm": {"comment": f"x\ntouch {marker} #"}}))
    sweep_file = write_yaml(tmp_path / "evil.yaml", text)
    result = command("sweep", f"sweep={sweep_file}", *QUICK, cwd=tmp_path,
                     env=stand_in_sbatch(tmp_path))
    assert_refused(result, "sweep.slurm.comment=", "control character", marker=marker)


def test_the_stand_in_sbatch_runs_what_reaches_its_script(tmp_path):
    marker, script = tmp_path / "marker", tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --comment='x\ntouch {marker} #'\n")
    env = {**os.environ, **stand_in_sbatch(tmp_path)}
    subprocess.run(["sbatch", str(script)], env=env, check=True, capture_output=True)
    assert marker.exists()


# ---------------------------------------------------------------------------- sweeps

EVIL_SWEEP = """\
study_name: evil
{section}
space:
  trainer.seed: choice(0)
n_trials: 1
pruner: none
"""


def chained_payload(folder: Path, marker: Path) -> list[str]:
    """numpy writes a hubconf.py that creates the marker, torch.hub imports it."""
    code = f"import os; os.mkdir('{marker}')  # %d"
    return [
        f"+model.a={{_target_:mlp_experiments.data.np.savetxt,fname:'{folder / 'hubconf.py'}',"
        f"X:[0],fmt:\"{code}\"}}",
        f"+model.b={{_target_:mlp_experiments.engine.torch.hub.load,repo_or_dir:'{folder}',"
        f"model:x,source:local,trust_repo:true}}",
    ]


@pytest.mark.parametrize("section", ["overrides", "variants"])
def test_a_sweep_file_chaining_savetxt_and_torch_hub_is_refused(tmp_path, section):
    marker = tmp_path / "marker"
    overrides = chained_payload(tmp_path, marker)
    lines = {"overrides": {"overrides": overrides},
             "variants": {"variants": {"evil": overrides}}}[section]
    text = EVIL_SWEEP.format(section=OmegaConf.to_yaml(lines))
    sweep_file = write_yaml(tmp_path / "evil.yaml", text)
    result = command("sweep", f"sweep={sweep_file}", *QUICK, cwd=tmp_path)
    assert_refused(result, "model.a._target_", marker=marker)
    assert not (tmp_path / "hubconf.py").exists()


def test_training_overrides_of_a_sweep_pass_the_hydra_checks(tmp_path):
    sweep_file = write_yaml(tmp_path / "plain.yaml", EVIL_SWEEP.format(section=""))
    marker = tmp_path / "marker"
    result = command("sweep", f"sweep={sweep_file}", *QUICK,
                     f"+hydra.callbacks.x._target_={MAKEDIRS}",
                     f"+hydra.callbacks.x.name='{marker}'", cwd=tmp_path)
    # The sweep runs its trials in-process, not as Hydra jobs: every hydra.* key is refused.
    assert_refused(result, "hydra.* keys are mlp-train's alone", marker=marker)


def test_a_study_name_cannot_escape_its_folder(tmp_path):
    """The report command writes docs/<study>/: a study named ../../escape wrote outside."""
    import optuna

    sweep_file = write_yaml(tmp_path / "plain.yaml", EVIL_SWEEP.format(section=""))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="../../escape", storage=storage)
    out = tmp_path / "reports" / "docs"
    marker = tmp_path / "escape"  # out / "../../escape"
    for module, extra in (("report", [f"report.out_dir={out}"]), ("sweep", [])):
        result = command(module, f"sweep={sweep_file}", "sweep.study_name=../../escape",
                         f"sweep.storage={storage}", *QUICK, *extra, cwd=tmp_path)
        assert_refused(result, "sweep.study_name='../../escape'", marker=marker)


# ---------------------------------------------------------------------------- bad values


BAD_VALUES = [
    (["trainer.epochs=0"], "trainer.epochs=0 must be at least 1"),
    (["trainer.batch_size=-2"], "trainer.batch_size=-2 must be at least 1"),
    (["optimizer.lr=0"], "optimizer.lr=0.0 must be a finite number above 0"),
    (["optimizer.lr=inf"], "optimizer.lr=inf must be a finite number above 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan must be a finite number above 0"),
    (["model.hidden_sizes=[64,0]"], "model.hidden_sizes=[64, 0]: every layer needs at least 1"),
    (["model.dropout=1.0"], "model.dropout=1.0 must be one rate in [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout=-0.1 must be one rate in [0, 1)"),
    (["model.dropout=[0.2,0.5]"], "one per hidden layer (1 here)"),
    (["model.dropout={p:0.2}"], "model.dropout={'p': 0.2} must be one rate in [0, 1)"),
    (["model.dropout=high"], "model.dropout='high' must be one rate"),
    (["data.classes=[3]"], "data.classes=[3]: a classifier needs at least two classes"),
    (["data=synthetic", "data.num_classes=1"], "data.num_classes=1: a classifier needs at least"),
    (["optimizer=adam", "optimizer.lr=???"], "These keys need a value: optimizer.lr"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES)
def test_a_bad_value_gets_its_message(overrides, message):
    from mlp_experiments.config.compose import check_overrides
    from mlp_experiments.errors import UserError

    with pytest.raises(UserError) as error:
        check_overrides(overrides)
    assert message in str(error.value)


def test_bad_values_are_answered_before_torch_is_imported(tmp_path):
    script = textwrap.dedent(f"""\
        import sys
        from mlp_experiments.config.compose import check_overrides
        from mlp_experiments.errors import UserError
        for overrides, message in {BAD_VALUES!r}:
            try:
                check_overrides(overrides)
            except UserError as error:
                assert message in str(error), (message, str(error))
            else:
                raise AssertionError(overrides)
        print("imported:", "torch" in sys.modules, "mlflow" in sys.modules)
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "imported: False False" in result.stdout  # neither torch nor mlflow


def test_a_label_outside_the_classes_gives_a_message_not_an_index_error(tmp_path):
    from conftest import write_idx, write_tiny_release

    from mlp_experiments import data
    from mlp_experiments.config.compose import compose_config
    from mlp_experiments.errors import UserError

    write_tiny_release(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, [12] * 120)  # not MNIST labels: only data.verify=true would notice
    for classes in ("null", "[0,6]"):
        cfg = compose_config(["data=mnist", f"data.root={tmp_path}", "data.verify=false",
                              "data.val_size=20", f"data.classes={classes}"]).data
        with pytest.raises(UserError, match="holds the label 12, but mnist has 10 classes"):
            data.load_dataset(cfg)


TINY_SEARCH = """\
study_name: tiny
space:
  trainer.seed: choice(0, 1)
n_trials: 2
pruner: median
"""


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sweep.n_workers=0", "sweep.n_workers=0 must be at least 1"),
        ("sweep.direction=up", "sweep.direction=up: choose maximize or minimize"),
        ("sweep.sampler=cmaes", "sweep.sampler=cmaes: choose one of tpe, random, qmc, grid"),
        ("sweep.pruner=patient", "sweep.pruner=patient: choose one of none, median"),
        ("sweep.pruner_args={n_warmup: 4}", "n_warmup is not a parameter of the median pruner"),
        ("sweep.pruner=percentile", "sweep.pruner=percentile needs sweep.pruner_args.percentile"),
        ("+hydra.job.env_set.TORCH_LOGS_OUT=x", "overriding hydra.job.env_set.TORCH_LOGS_OUT is"),
        ("sweep.sampler_args={startup: 4}", "startup is not a parameter of the tpe sampler"),
        (("sweep.sampler=grid", "sweep.sampler_args={seed: 1}"), "the grid sampler takes none"),
        ("sweep.storage=redis://user:secret@host/0", "the scheme 'redis' is not an Optuna"),
        ("sweep.metric=val_rmse", "sweep.metric=val_rmse is not a metric of data=synthetic"),
        ("sweep.space={trainer.batch_size: 'choice(32, 0)'}",
         "The trial {'trainer.seed': 0, 'trainer.batch_size': 0}: trainer.batch_size=0 must be"),
    ],
)
def test_bad_sweep_settings_fail_the_plan(tmp_path, setting, message):
    from mlp_experiments.errors import UserError
    from mlp_experiments.sweep import space, spec

    path = write_yaml(tmp_path / "tiny.yaml", TINY_SEARCH)
    with pytest.raises(UserError) as error:
        settings = [setting] if isinstance(setting, str) else list(setting)
        name, sweep_overrides, training = spec.split_arguments([f"sweep={path}", *settings,
                                                                  *QUICK])
        sweep = spec.load_sweep(name, sweep_overrides)
        spec.check_space(sweep, training, space.parse_space(sweep.space))
    assert message in str(error.value)
    assert "secret" not in str(error.value)


def test_a_trial_that_cannot_be_built_fails_the_plan(tmp_path):
    from mlp_experiments.errors import UserError
    from mlp_experiments.sweep import space, spec

    path = write_yaml(tmp_path / "tiny.yaml", """\
        study_name: tiny
        space:
          optimizer.nesterov: choice(false, true)
        sampler: grid
        """)
    sweep = spec.load_sweep(str(path), [])
    with pytest.raises(UserError, match=r"The trial \{'optimizer.nesterov': True\}: it cannot "
                                        r"be built: .*Nesterov momentum requires a momentum"):
        spec.check_space(sweep, QUICK, space.parse_space(sweep.space))


# ---------------------------------------------------------------------------- Hydra's flags


def test_cfg_job_prints_the_config(tmp_path):
    result = command("train", "--cfg", "job", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epochs: 3" in result.stdout and "_target_: torch.optim.SGD" in result.stdout


@pytest.mark.parametrize("flags", [["-cn", "train"], ["--config-name=train"]])
def test_the_config_name_flags(tmp_path, flags):
    result = command("train", *flags, "--cfg", "job", "optimizer=adam", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "_target_: torch.optim.Adam" in result.stdout


def test_info_and_help(tmp_path):
    info = command("train", "--info", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "Config search path" in info.stdout and "Defaults Tree" in info.stdout
    app_help = command("train", "--help", cwd=tmp_path)
    assert app_help.returncode == 0, app_help.stderr
    assert "optimizer: adagrad, adam, adamw" in app_help.stdout


def test_a_config_dir_adds_presets(tmp_path):
    folder = write_yaml(tmp_path / "extra_conf" / "experiment" / "x.yaml", """\
        # @package _global_
        trainer:
          epochs: 7
        """).parent.parent
    result = command("train", "-cd", str(folder), "experiment=x", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epochs: 7" in result.stdout


def test_a_config_path_replaces_the_config_folder_and_is_checked(tmp_path):
    from mlp_experiments.config.compose import CONF_DIR

    shutil.copytree(CONF_DIR, tmp_path / "conf")
    result = command("train", "-cp", str(tmp_path / "conf"), "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    marker, path = tmp_path / "marker", tmp_path / "conf" / "train.yaml"
    primary = OmegaConf.load(path)
    primary.hydra.callbacks = {"x": {"_target_": MAKEDIRS, "name": str(marker)}}
    OmegaConf.save(primary, path)
    result = command("train", f"--config-path={tmp_path / 'conf'}", *QUICK, cwd=tmp_path)
    assert_refused(result, "hydra.callbacks must stay empty", marker=marker)


def test_multirun_runs_every_job(tmp_path):
    result = command("train", "-m", "trainer.seed=0,1", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "#0 : trainer.seed=0" in output and "#1 : trainer.seed=1" in output
    assert len(list((tmp_path / "checkpoints").glob("*/last.pt"))) == 2


def test_multirun_checks_every_sweep_value(tmp_path):
    marker = tmp_path / "marker"
    value = f"{{_target_:{MAKEDIRS},name:'{marker}'}}"
    result = command("train", "-m", f"model.dropout=0.1,{value}", *QUICK, cwd=tmp_path)
    assert_refused(result, "model.dropout._target_", marker=marker)
    assert not (tmp_path / "multirun").exists()  # refused before the first job


def test_shell_completion(tmp_path):
    install = command("train", "-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "hydra_bash_completion" in install.stdout
    # Hydra's bash completion recognises `python <script>` (or an app name), not `python -m`
    query = command("train", "--shell-completion", "query=bash", cwd=tmp_path,
                    env={"COMP_LINE": "python mlp_experiments/train.py optimizer="})
    assert query.returncode == 0, query.stderr
    assert "optimizer=adam" in query.stdout.split()


def test_experimental_rerun_which_unpickles_is_refused(tmp_path):
    marker = tmp_path / "marker"
    payload = tmp_path / "config.pickle"
    payload.write_bytes(pickle.dumps(MkdirPayload(marker)))
    result = command("train", f"--experimental-rerun={payload}", cwd=tmp_path)
    assert_refused(result, "--experimental-rerun loads a pickle file", marker=marker)
