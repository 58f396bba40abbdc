"""Bad input gets one message before anything runs: the key, the value, the allowed range and an
example, before torch is imported, and nothing is written.

Every numeric setting states its range once, beside its schema field (config/schemas.py,
`ranged`). The table below is derived from those ranges: for every option of every config group
in conf/, each of its numeric settings just outside its range (below, above, and NaN and inf for
a float), composed as the command line composes it; then the examples the issue lists, wrong
types and missing values. A setting added to a schema with a range is tried without a new row.

The table tries 196 distinct bad inputs (test_the_count_is_the_one_printed checks the number).
"""

import dataclasses
import math
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from mlp_experiments.config.compose import check_overrides
from mlp_experiments.config.ranges import Range, number_type, range_table, ranges
from mlp_experiments.config.registry import SCHEMAS, TARGET_SCHEMAS, schemas_by_section
from mlp_experiments.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("data", "model", "optimizer", "scheduler", "loss", "regularization", "trainer")
# What an option needs beside it to make a config that can train (the checks refuse the rest).
PARTNERS = {
    "data=regression": ["loss=mse"],
    "model=model_demo": ["loss=scratch_cross_entropy"],
    "model=scratch_mlp": ["loss=scratch_cross_entropy"],
    "loss=bce": ["data.classes=[0,6]"],
    "loss=l1": ["data=regression"],
    "loss=mse": ["data=regression"],
    "loss=smooth_l1": ["data=regression"],
    "loss=scratch_cross_entropy": ["model=scratch_mlp"],
}


def options() -> list[list[str]]:
    """Every option of the groups in conf/, as overrides, with its partners."""
    chosen = [f"{group}={path.stem}" for group in GROUPS
              for path in sorted((ROOT / "conf" / group).glob("*.yaml"))]
    return [[option, *PARTNERS.get(option, [])] for option in chosen]


def option_schema(option: str) -> type:
    """The schema an option names in its defaults list (`/schema/<group>/<name>@_here_`), or its
    section's one schema (regularization, trainer)."""
    group, _, name = option.partition("=")
    for entry in OmegaConf.load(ROOT / "conf" / group / f"{name}.yaml").get("defaults", []):
        if str(entry).startswith("/schema/"):
            return SCHEMAS[group][str(entry).split("@")[0].split("/")[-1]]
    return schemas_by_section()[group][0]


def bad_numbers(allowed: Range) -> list[float]:
    """Just outside each finite end, and NaN and inf where floats are allowed."""
    numbers = []
    if math.isfinite(allowed.low):
        numbers.append(allowed.low - 1 if allowed.includes_low else allowed.low)
    if math.isfinite(allowed.high):
        numbers.append(allowed.high + 1 if allowed.includes_high else allowed.high)
    if allowed.integer:
        return [int(number) for number in numbers]
    return [float(number) for number in numbers] + [math.nan, math.inf]


def is_list(schema: type, name: str) -> bool:
    return "list" in str(typing.get_type_hints(schema)[name])


def walked_rows() -> list[tuple[list[str], str, Range, str]]:
    """(overrides, key, range, the value as the message shows it) for every numeric setting of
    every option, out of range."""
    rows = []
    for overrides in options():
        schema = option_schema(overrides[0])
        section = overrides[0].partition("=")[0]
        for name, allowed in ranges(schema).items():
            for number in bad_numbers(allowed):
                shown = f"[{number}]" if is_list(schema, name) else str(number)
                key = f"{section}.{name}"
                rows.append(([*overrides, f"{key}={shown}"], key, allowed, shown))
    return rows


WALKED = walked_rows()


@pytest.mark.parametrize(("overrides", "key", "allowed", "shown"), WALKED,
                         ids=[" ".join(row[0]) for row in WALKED])
def test_every_setting_out_of_its_range_gets_one_message(overrides, key, allowed, shown):
    with pytest.raises(UserError) as error:
        check_overrides(overrides)
    message = str(error.value)
    assert f"{key}={shown}" in message, message
    assert str(allowed) in message or allowed.interval in message, message  # the range
    assert "e.g." in message, message


# The examples of issue 23, wrong types and missing values, with (part of) their message.
EXAMPLES = [
    (["regularization.weight_decay=-1"], "regularization.weight_decay=-1.0 must be a finite "
     "number of 0 or more (e.g. regularization.weight_decay=0.0005)."),
    (["trainer.patience=-3"], "trainer.patience=-3 must be at least 0 (e.g. trainer.patience=3)"),
    (["scheduler=exponential", "scheduler.gamma=nan"],
     "scheduler.gamma=nan must be a finite number above 0 (e.g. scheduler.gamma=0.9)"),
    (["scheduler=step", "scheduler.gamma=-1"], "scheduler.gamma=-1.0 must be a finite number "
     "above 0"),
    (["regularization.l2_penalty=-1"], "regularization.l2_penalty=-1.0 must be a finite number"),
    (["data.val_size=0"], "data.val_size=0: early stopping and the sweeps score the validation "
     "split, so it must be at least 1 (e.g. data.val_size=500)"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 must be at least 1"),
    (["trainer.seed=-1"], "trainer.seed=-1: NumPy takes 32-bit seeds, so it must be an integer "
     "in [0, 4294967295] (e.g. trainer.seed=0)"),
    (["optimizer.momentum=-1"], "optimizer.momentum=-1.0 must be a finite number of 0 or more"),
    (["optimizer=adam", "optimizer.betas=[2.0,0.999]"], "optimizer.betas=[2.0, 0.999]: every "
     "beta needs a number in [0, 1) (e.g. optimizer.betas=[0.9, 0.999])"),
    (["model.init_std=-1"], "model.init_std=-1.0 must be a finite number of 0 or more"),
    (["model.hidden_sizes=[1000000000]"], "model.hidden_sizes=[1000000000] makes a model of "
     "795,000,000,010 parameters (784 inputs, 10 outputs), above the 1,000,000,000"),
    (["model.hidden_sizes=[256,40000,40000]"], "makes a model of 1,610,920,970 parameters"),
    (["model=scratch_mlp", "loss=scratch_cross_entropy", "model.hidden_sizes=[2000000]"],
     "model.hidden_sizes=[2000000] makes a model of 1,590,000,010 parameters"),
    (["data=synthetic", "data.train_size=100"], "data.val_size=200 must be below "
     "data.train_size=100"),
    (["data.classes=[0,10]"], "data.classes=[0, 10]: every class needs an integer in [0, 9]"),
    (["data.root=/nonexistent/mlp-data"], "data.root=/nonexistent/mlp-data is not a folder. "
     "Point it at a folder with the four IDX files"),
    (["trainer.epochs=abc"], "trainer.epochs: Value 'abc' of type 'str' could not be converted "
     "to Integer."),
    (["optimizer.lr=fast"], "optimizer.lr: Value 'fast' of type 'str' could not be converted to "
     "Float."),
    (["data.val_size=0.5"], "data.val_size: Value '0.5' of type 'float' could not be converted "
     "to Integer."),
    (["model.hidden_sizes=[wide]"], "model.hidden_sizes[0]: Value 'wide' of type 'str'"),
    (["optimizer=adam", "optimizer.betas=0.9"], "optimizer.betas: Invalid value assigned: float "
     "is not a ListConfig, list or tuple."),
    (["optimizer=adam", "optimizer.lr=???"], "These keys need a value: optimizer.lr."),
    (["scheduler=step", "scheduler.gamma=???"], "These keys need a value: scheduler.gamma."),
]


@pytest.mark.parametrize(("overrides", "message"), EXAMPLES,
                         ids=[" ".join(row[0]) for row in EXAMPLES])
def test_each_example_gets_its_message(overrides, message):
    with pytest.raises(UserError) as error:
        check_overrides(overrides)
    assert message in str(error.value)


def distinct_bad_inputs() -> set[tuple[str, ...]]:
    return {tuple(row[0]) for row in WALKED} | {tuple(row[0]) for row in EXAMPLES}


def test_the_count_is_the_one_printed():
    count = len(distinct_bad_inputs())
    assert f"The table tries {count} distinct bad inputs" in " ".join(__doc__.split())
    page = " ".join((ROOT / "docs" / "bad-input.md").read_text().split())
    assert f"{count} distinct bad inputs" in page


@pytest.mark.parametrize("overrides", options(), ids=[" ".join(o) for o in options()])
def test_every_option_passes_with_its_settings_in_range(overrides):
    """So that each row above fails for its bad value alone."""
    check_overrides(overrides)


def all_schemas() -> set[type]:
    return {schema for schemas in schemas_by_section().values() for schema in schemas} | set(
        TARGET_SCHEMAS.values())


@pytest.mark.parametrize("schema", sorted(all_schemas(), key=lambda s: s.__name__),
                         ids=lambda schema: schema.__name__)
def test_every_numeric_setting_states_its_range(schema):
    hints = typing.get_type_hints(schema)
    numeric = {item.name for item in dataclasses.fields(schema)
               if number_type(hints[item.name]) in (int, float) or hints[item.name] is Any}
    assert numeric <= set(ranges(schema)), numeric - set(ranges(schema))


@pytest.mark.parametrize("overrides", [
    ["model.hidden_sizes=[64,32]"],
    ["model.hidden_sizes=[300]", "model.activation=prelu", "loss=bce", "data.classes=[0,6]"],
    ["model=scratch_mlp", "loss=scratch_cross_entropy", "data=synthetic", "data.features=7"],
])
def test_the_parameter_count_is_the_built_models(overrides):
    """checks.parameter_count, which the size cap compares, counts what torch builds (PReLU
    adds one parameter per hidden layer)."""
    from mlp_experiments.config import policy
    from mlp_experiments.config.checks import model_shape, parameter_count

    cfg = check_overrides(overrides)
    in_features, num_outputs = model_shape(cfg)
    model = policy.instantiate(cfg.model, in_features=in_features, num_outputs=num_outputs)
    built = sum(parameter.numel() for parameter in model.parameters())
    assert parameter_count(cfg) <= built <= parameter_count(cfg) + len(cfg.model.hidden_sizes)


def test_the_page_lists_the_ranges_of_the_schemas():
    """docs/bad-input.md holds range_table(), generated from the schemas."""
    assert range_table(schemas_by_section()) in (ROOT / "docs" / "bad-input.md").read_text()


def test_bad_values_are_answered_before_torch_is_imported(tmp_path):
    script = textwrap.dedent(f"""\
        import sys
        from mlp_experiments.config.compose import check_overrides
        from mlp_experiments.errors import UserError
        for overrides, message in {EXAMPLES!r}:
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


@pytest.mark.parametrize(("override", "key"), [
    ("regularization.weight_decay=-1", "regularization.weight_decay=-1.0"),
    ("model.hidden_sizes=[1000000000]", "model.hidden_sizes=[1000000000]"),
    ("scheduler.gamma=nan", "scheduler.gamma=nan"),
    ("trainer.epochs=abc", "trainer.epochs"),
])
def test_the_training_command_refuses_before_writing_anything(tmp_path, override, key):
    extra = ["scheduler=exponential"] if override.startswith("scheduler.") else []
    result = subprocess.run(
        [sys.executable, "-m", "mlp_experiments.train", *extra, override, "data=synthetic",
         "tracking=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert key in output, output
    assert len(output.strip().splitlines()) == 1, output  # one message, one line
    assert list(tmp_path.iterdir()) == [], output  # no outputs/, checkpoints/, mlflow.db


def test_a_tracked_run_refused_before_its_journal_says_only_why(tmp_path):
    """Refused once torch says there is no GPU, before the run has a journal: the command's one
    line, not a wait for the records of a run that never began (it waited DRAIN_S, 30 s, then
    warned that 0 records were unsent)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    result = subprocess.run(
        [sys.executable, "-m", "mlp_experiments.train", "trainer.device=cuda", "data=synthetic",
         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.strip().splitlines() == [
        "error: trainer.device=cuda but no CUDA GPU is visible: use trainer.device=auto or cpu."]


@pytest.mark.parametrize(("command", "store", "message"), [
    (["mlp_experiments.train", "data=synthetic"], "mlflow.db",
     "tracking.uri=sqlite:///mlflow.db: mlflow.db is not an SQLite database. Move it aside"),
    (["mlp_experiments.evaluate", "evaluate.run_id=" + "0" * 32], "mlflow.db",
     "tracking.uri=sqlite:///mlflow.db: mlflow.db is not an SQLite database"),
    (["mlp_experiments.sweep", "sweep=search_mlp", "tracking=none"], "optuna.db",
     "sweep.storage=sqlite:///optuna.db: optuna.db is not an SQLite database"),
    (["mlp_experiments.report", "sweep=search_mlp", "tracking=none"], "optuna.db",
     "sweep.storage=sqlite:///optuna.db: optuna.db is not an SQLite database"),
    (["mlp_experiments.sweep", "sweep=search_mlp", "tracking=none",
      "sweep.storage=postgresql://mlp@127.0.0.1:9/studies"], None,
     "sweep.storage=postgresql://mlp@127.0.0.1:9/studies: the database server at 127.0.0.1:9 "
     "does not answer"),
])
def test_a_store_that_is_not_what_it_says_is_named_and_kept(tmp_path, command, store, message):
    """A garbage SQLite file, a database server that does not answer: one message naming the
    store and the fix, nothing changed in the file."""
    garbage = b"not a database, but someone's notes\n" * 20
    if store:
        (tmp_path / store).write_bytes(garbage)
    # The default store in the working directory, whatever another test's MLflow set.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert message in output, output
    if store:
        assert (tmp_path / store).read_bytes() == garbage


UNWRITABLE = "/proc/mlp-experiments"  # procfs: no one, root included, creates a folder there


@pytest.mark.parametrize(("command", "key"), [
    (["mlp_experiments.train", "data=synthetic", "tracking=none"], "hydra.run.dir"),
    (["mlp_experiments.train", "-m", "data=synthetic", "tracking=none"], "hydra.sweep.dir"),
    (["mlp_experiments.train", "data=synthetic", "tracking=none"], "trainer.checkpoint_dir"),
    (["mlp_experiments.plots", "plots.figure=activations"], "plots.out_dir"),
    (["mlp_experiments.fetch", "fetch.dataset=mnist"], "fetch.cache_dir"),
    (["mlp_experiments.evaluate", "evaluate.run_id=" + "0" * 32], "evaluate.out_dir"),
    (["mlp_experiments.report", "sweep=search_mlp", "tracking=none"], "report.out_dir"),
])
def test_every_folder_a_command_writes_is_checked_before_any_work(tmp_path, command, key):
    result = subprocess.run([sys.executable, "-m", *command, f"{key}={UNWRITABLE}/out"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert f"error: {key}={UNWRITABLE}/out: this folder cannot be created or written here" \
        in output, output
    assert list(tmp_path.iterdir()) == [], output
