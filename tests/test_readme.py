"""Every command README.md and the manual's pages (docs/*.md) show in their ```bash blocks that
runs one of our commands
(`uv run mlp-<kind> ...`, or `uv run python -m mlp_experiments.<kind> ...`), run as a user runs
it: a subprocess in a fresh working directory, the environment's console script (what `uv run
mlp-<kind>` starts) or Python, one SQLite tracking store of its own and small-size overrides
appended per kind.

The commands are read from the pages, so a new one is covered automatically; one of a kind this
file does not know fails, so that none goes untested. Placeholders (`<id>`) are filled from the
commands that make them. The commands share one working directory as a user's would (the
default study storage `./optuna.db` included: the second search resumes the first) and run two
at a time in the background, each after the commands it needs (an evaluation after the training
it reloads, a report after its sweep); each test waits for its own. The source tree must be as
it was before.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from math import prod
from pathlib import Path

import optuna
import pytest
from conftest import (
    FASHION_DIR,
    answers,
    default_sigint,
    open_tracking_store,
    two_free_ports,
)
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mlp_experiments import cli, evaluate
from mlp_experiments.config.choices import DatasetName
from mlp_experiments.config.compose import compose_config
from mlp_experiments.config.identity import config_hash
from mlp_experiments.report import command as report_command
from mlp_experiments.sweep import command as sweep_command
from mlp_experiments.sweep import presets, spec
from mlp_experiments.sweep import study as studies

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PREFIX = ("uv", "run", "python", "-m")
PACKAGE = "mlp_experiments."
SCRIPT = "mlp-"  # the console scripts, `uv run mlp-<kind>`
BIN = Path(sys.executable).parent
PARALLEL = 2  # commands at a time, for the 2-core CI machine
TIMEOUT_S = 600  # one command
UI_START_TIMEOUT_S = 120
NOT_SOURCE = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_ID = "<id>"  # the README's placeholder for a training's run id
# The commands record in the test's store, whatever the environment points at; each gets its
# share of the cores (oversubscribed OpenMP threads spin against each other).
ENVIRONMENT = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
               "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // PARALLEL))}


@dataclass(frozen=True)
class Command:
    index: int  # its place among the README's commands
    kind: str  # the command it runs: train, sweep, report, evaluate, ui, plots, rerun, sync
    arguments: tuple[str, ...]
    script: bool  # `uv run mlp-<kind>`, else `uv run python -m mlp_experiments.<kind>`

    def program(self) -> list[str]:
        if self.script:
            return [str(BIN / f"{SCRIPT}{self.kind}")]
        return [sys.executable, "-m", PACKAGE + self.kind]


def pages() -> list[Path]:
    """README.md, then the manual's pages (docs/*.md; the reports under docs/ are outputs)."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands() -> list[Command]:
    blocks = [block for page in pages()
              for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(),
                                      flags=re.MULTILINE | re.DOTALL)]
    commands, seen = [], set()
    for line in "\n".join(blocks).splitlines():
        words = shlex.split(line, comments=True)
        if tuple(words[:4]) == PREFIX and len(words) > 4 and words[4].startswith(PACKAGE):
            found = (words[4].removeprefix(PACKAGE), tuple(words[5:]), False)
        elif tuple(words[:2]) == PREFIX[:2] and len(words) > 2 and words[2].startswith(SCRIPT):
            found = (words[2].removeprefix(SCRIPT), tuple(words[3:]), True)
        else:
            continue
        if found not in seen:  # the quickstart repeats some of the manual's: run once
            seen.add(found)
            commands.append(Command(len(commands), *found))
    return commands


COMMANDS = readme_commands()


# ---------------------------------------------------------------------------- what a command is


def hydra_arguments(command: Command):
    """A training's command line as Hydra's own parser reads it: flags and overrides."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(command.arguments))


def parsed_overrides(command: Command) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(hydra_arguments(command).overrides)


def jobs(command: Command) -> int:
    """The runs a training records: one, or one per combination of a multirun's values."""
    if not hydra_arguments(command).multirun:
        return 1
    return prod(len(list(override.sweep_string_iterator()))
                for override in parsed_overrides(command) if override.is_sweep_override())


def keys_of(command: Command, arguments: list[str] | None = None):
    """(the command's config, the arguments it passes on) as the command reads them."""
    parsed = {"sweep": sweep_command.COMMAND, "report": report_command.COMMAND,
              "evaluate": evaluate.COMMAND}[command.kind]
    return cli.parse(parsed, list(command.arguments) if arguments is None else arguments)


def sweep_of(command: Command):
    """(the sweep's settings, its training overrides) of a sweep or report command."""
    _, arguments = keys_of(command)
    name, sweep_overrides, training = spec.split_arguments(arguments)
    return spec.load_sweep(name, sweep_overrides), training


def study_of(command: Command) -> str:
    return sweep_of(command)[0].study_name


def model_run_command() -> Command:
    """The training whose run fills RUN_ID: the README's first bare `train` (the default
    experiment, which logs its model)."""
    bare = [c for c in COMMANDS if c.kind == "train" and not c.arguments]
    if not bare:
        pytest.fail(f"README.md shows no bare `train` command to fill {RUN_ID} with its run.")
    return bare[0]


def dependencies(command: Command) -> list[Command]:
    """The commands that must have run before this one."""
    needed = [model_run_command()] if any(RUN_ID in a for a in command.arguments) else []
    if command.kind == "sweep":  # an earlier command of the same study: this one resumes it
        needed += [c for c in COMMANDS[: command.index]
                   if c.kind == "sweep" and study_of(c) == study_of(command)][-1:]
    elif command.kind == "report":
        needed += writers(command, lambda sweep: study_of(sweep) == study_of(command))
    elif command.kind == "train" and not hydra_arguments(command).config_dir:
        # The same training in another form (the module form): it shares the first one's
        # checkpoint folder, so it runs after it, as a user typing them one by one does.
        needed += [c for c in COMMANDS[: command.index]
                   if c.kind == "train" and c.arguments == command.arguments][:1]
    elif command.kind == "rerun":  # an audit of a study: after the sweep that makes it
        studies = [a.split("=", 1)[1] for a in command.arguments if a.startswith("rerun.study=")]
        if studies:
            needed += writers(command, lambda sweep: study_of(sweep) == studies[-1])
    elif command.kind == "sync":  # a training's journal to look at
        needed += [model_run_command()]
    elif command.kind == "train":
        experiment = [o.value() for o in parsed_overrides(command)
                      if o.key_or_group == "experiment"]
        needed += writers(command,
                          lambda sweep: presets.best_preset_name(study_of(sweep)) in experiment)
    return needed


def writers(command: Command, writes) -> list[Command]:
    """The first README sweep that writes what the command reads (a study, a best preset)."""
    found = [c for c in COMMANDS if c.kind == "sweep" and writes(c)]
    if not found:
        pytest.fail(f"No sweep in README.md makes what `{shlex.join(command.arguments)}` needs.")
    return found[:1]


def needs_fashion_mnist(command: Command) -> bool:
    if command.kind == "train":
        if hydra_arguments(command).cfg or hydra_arguments(command).info:
            return False  # prints the config or Hydra's information, trains nothing
        data = [o.value() for o in parsed_overrides(command) if o.key_or_group == "data"]
        return not data or data[-1] == DatasetName.fashion_mnist.value
    if command.kind == "sweep":
        sweep, training = sweep_of(command)
        data = compose_config([*sweep.overrides, *training]).data
        return data.name == DatasetName.fashion_mnist
    return any(needs_fashion_mnist(needed) for needed in dependencies(command))


def skip_reason(command: Command) -> str | None:
    if needs_fashion_mnist(command) and not FASHION_DIR.is_dir():
        return f"needs FashionMNIST in {FASHION_DIR}: apt-get install dataset-fashion-mnist"
    return None


# ---------------------------------------------------------------------------- running them


def experiment_name(command: Command) -> str:
    return f"readme-{command.index}"


class Workspace:
    """One working directory, tracking store and study storage for every command."""

    def __init__(self, folder: Path):
        self.folder = folder
        # The tables first: two commands creating them at once would collide.
        self.tracking_uri = open_tracking_store(folder)
        self.client = MlflowClient(self.tracking_uri)
        self.pool = ThreadPoolExecutor(PARALLEL)
        self.started: dict[Command, Future] = {}

    def appended(self, command: Command) -> list[str]:
        """The overrides that make a command small and keep it in this workspace's store."""
        tracking = f"tracking.uri={self.tracking_uri}"
        return {
            "train": ["trainer.epochs=1", tracking,
                      f"tracking.experiment={experiment_name(command)}"],
            "sweep": ["sweep.n_trials=2", "trainer.epochs=1", tracking],
            "report": [tracking],
            "evaluate": [tracking],
            "rerun": [tracking],
            "plots": [],
            "sync": [],
        }[command.kind]

    def submit(self, command: Command) -> Future:
        """Start the command in the background once (after what it needs, started first)."""
        if command not in self.started:
            needed = [self.submit(c) for c in dependencies(command)]
            self.started[command] = self.pool.submit(self.execute, command, needed)
        return self.started[command]

    def result(self, command: Command) -> subprocess.CompletedProcess:
        return self.submit(command).result()

    def execute(self, command: Command, needed: list[Future]) -> subprocess.CompletedProcess:
        for future in needed:
            future.result()
        arguments = [self.fill(argument) for argument in command.arguments]
        return subprocess.run(
            [*command.program(), *arguments, *self.appended(command)],
            cwd=self.folder, env=ENVIRONMENT, capture_output=True, text=True, timeout=TIMEOUT_S,
        )

    def fill(self, argument: str) -> str:
        for placeholder in re.findall(r"<[^<>]+>", argument):
            if placeholder != RUN_ID:
                raise LookupError(f"README placeholder {placeholder}: tell tests/test_readme.py "
                                  f"which command's result fills it.")
            argument = argument.replace(placeholder, self.model_run_id())
        return argument

    def runs_of(self, command: Command) -> list:
        """The runs the command recorded (a rerun of one of them lands beside it: not one)."""
        experiment = self.client.get_experiment_by_name(experiment_name(command))
        if not experiment:
            return []
        return [run for run in self.client.search_runs([experiment.experiment_id])
                if "rerun.of" not in run.data.tags]

    def model_run_id(self) -> str:
        (run,) = self.runs_of(model_run_command())
        return run.info.run_id

    def storage(self, sweep) -> str:
        """The sweep's storage URL, a relative SQLite path taken from this working directory."""
        url = spec.storage_url(sweep)
        if url.startswith("sqlite:///"):
            return f"sqlite:///{self.folder / url.removeprefix('sqlite:///')}"
        return url


def source_files() -> dict[str, tuple[int, int]]:
    """Every file of the source tree (caches and the environment aside): size, mtime."""
    files = {}
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in NOT_SOURCE]
        for name in names:
            path = Path(folder, name)
            stat = path.stat()
            files[str(path.relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def workspace(request, tmp_path_factory):
    """The workspace, with the selected commands started in the background in README order."""
    before = source_files()
    workspace = Workspace(tmp_path_factory.mktemp("readme"))
    selected = [item.callspec.params["command"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    for command in selected:
        if command.kind in CHECKS and command.kind != "ui" and not skip_reason(command):
            workspace.submit(command)
    yield workspace
    workspace.pool.shutdown(cancel_futures=True)
    after = source_files()
    changed = sorted(path for path in before.keys() | after.keys()
                     if before.get(path) != after.get(path))
    assert not changed, f"the README's commands changed the source tree: {changed}"


# ---------------------------------------------------------------------------- checks per kind


def succeeded(process: subprocess.CompletedProcess) -> str:
    output = process.stdout + process.stderr
    assert process.returncode == 0, f"exit code {process.returncode}:\n{output[-5000:]}"
    return output


def check_train(workspace: Workspace, command: Command) -> None:
    process = workspace.result(command)
    succeeded(process)
    runs = workspace.runs_of(command)
    if hydra_arguments(command).cfg:
        assert OmegaConf.create(process.stdout).trainer.epochs == 1  # the composed config
        assert runs == []
        return
    if hydra_arguments(command).info:
        assert "Config search path" in process.stdout and "Defaults Tree" in process.stdout
        assert runs == []
        return
    assert len(runs) == jobs(command)
    assert {(run.info.status, run.data.tags["outcome"]) for run in runs} == {
        ("FINISHED", "completed")}
    assert {run.data.params["trainer.epochs"] for run in runs} == {"1"}
    if len(runs) == 1:  # it trained the very config its command line composes
        (run,) = runs
        expected = config_hash(composed(workspace, command), run.data.tags["data_digest"])
        assert run.data.tags["config_hash"] == expected


def composed(workspace: Workspace, command: Command):
    """The config a training's command line composes, its config folder (-cd) included."""
    arguments = hydra_arguments(command)
    overrides = [*arguments.overrides, *workspace.appended(command)]
    if arguments.config_dir:
        return compose_config(overrides, extra_dir=workspace.folder / arguments.config_dir)
    return compose_config(overrides)


def check_sweep(workspace: Workspace, command: Command) -> None:
    output = succeeded(workspace.result(command))
    sweep, _ = sweep_of(command)
    study = optuna.load_study(study_name=sweep.study_name, storage=workspace.storage(sweep))
    assert studies.counted_trials(study) == 2  # sweep.n_trials=2; a second command resumes
    parent = workspace.client.get_run(study.user_attrs["mlflow_parent_run_id"])
    trials = workspace.client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == len([t for t in study.trials if "reused_from" not in t.user_attrs])
    if study.user_attrs["kind"] == "search":
        preset = workspace.folder / presets.best_preset_path(sweep.study_name)
        assert preset.read_text().startswith("# @package _global_")
        assert f"train it: {presets.best_preset_command(sweep.study_name)}" in output


def check_report(workspace: Workspace, command: Command) -> None:
    process = workspace.result(command)
    succeeded(process)
    folder = Path(keys_of(command)[0].report.out_dir)
    sweep, _ = sweep_of(command)
    path = folder / sweep.study_name / "report.md"
    assert process.stdout.splitlines()[0] == str(path)
    assert (workspace.folder / path).read_text().startswith(f"# Study `{sweep.study_name}`")
    study = optuna.load_study(study_name=sweep.study_name, storage=workspace.storage(sweep))
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    assert f"logged to MLflow run {parent_id}" in process.stdout
    logged = {a.path for a in workspace.client.list_artifacts(parent_id, "report")}
    assert "report/report.md" in logged


def check_evaluate(workspace: Workspace, command: Command) -> None:
    process = workspace.result(command)
    succeeded(process)
    assert "the same as the run's logged" in process.stdout
    assert "NOT the same" not in process.stdout
    run_id = workspace.model_run_id()
    out = keys_of(command, [workspace.fill(a) for a in command.arguments])[0].evaluate.out_dir
    table = workspace.folder / out / run_id / "per_class_accuracy.md"
    assert table.read_text().count("\n") == 2 + 10  # header, separator, one row per class


def check_rerun(workspace: Workspace, command: Command) -> None:
    """Trained again from its record, on this CPU: each rerun identical to its original."""
    process = workspace.result(command)
    succeeded(process)
    verdicts = process.stdout.strip().splitlines()
    assert verdicts and all(": identical: every metric" in line for line in verdicts), \
        process.stdout


def check_plots(workspace: Workspace, command: Command) -> None:
    process = workspace.result(command)
    succeeded(process)
    figure = workspace.folder / process.stdout.split()[-1]
    assert figure.read_bytes()[:8] == PNG_SIGNATURE


def check_ui(workspace: Workspace, command: Command) -> None:
    """Started in the foreground on free ports, its MLflow health URL polled, then Ctrl-C."""
    port, dashboard_port = two_free_ports()
    log = workspace.folder / f"ui-{command.index}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command.program(), *command.arguments, f"ui.port={port}",
             f"ui.dashboard_port={dashboard_port}", f"tracking.uri={workspace.tracking_uri}"],
            cwd=workspace.folder, env=ENVIRONMENT, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=default_sigint,
        )
    health = f"http://127.0.0.1:{port}/health"
    try:
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        while not answers(health):
            assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{health} did not answer:\n{log.read_text()}"
            time.sleep(1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()[-5000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert f"MLflow UI: http://127.0.0.1:{port}" in log.read_text()
    assert not answers(health)  # Ctrl-C stopped the server too


def check_sync(workspace: Workspace, command: Command) -> None:
    """After a training: its journal is found and every journal is sent (or listed)."""
    output = succeeded(workspace.result(command))
    assert re.search(r"^\d+ journal\(s\) to send under checkpoints$", output, re.MULTILINE), output
    if "--dry-run" not in command.arguments:
        assert re.search(r"^sent (\d+) of \1 journal\(s\)$", output, re.MULTILINE), output


CHECKS = {"train": check_train, "sweep": check_sweep, "report": check_report,
          "evaluate": check_evaluate, "plots": check_plots, "ui": check_ui,
          "rerun": check_rerun, "sync": check_sync}


# ---------------------------------------------------------------------------- the tests


def test_the_readme_shows_a_command_of_every_kind_checked_here():
    assert {command.kind for command in COMMANDS} == set(CHECKS)


@pytest.mark.parametrize("command", COMMANDS,
                         ids=lambda command: shlex.join([command.kind, *command.arguments]))
def test_readme_command(command, workspace):
    if command.kind not in CHECKS:
        pytest.fail(f"README.md shows a `{command.kind}` command, a kind tests/test_readme.py "
                    f"does not run: add how to run and check it there.")
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    CHECKS[command.kind](workspace, command)
