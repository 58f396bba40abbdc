"""`mlp-rerun rerun.run_id=<id> | rerun.study=<name> [rerun.sample=3]
[rerun.environment=recorded|current] [rerun.tolerance=0.005] [tracking.uri=...]`

Rebuilds the code a run ran from its record (its commit, with its uncommitted diff applied, in
a temporary git worktree), composes the run's recorded overrides with that code, checks that
they give the recorded configuration and that the data has the recorded digest, trains it
again as a new run linked to the original, and compares every per-epoch metric. The verdict:
"identical" (bit for bit), "within seed noise" (every difference inside the spread of the
original's sibling seeds, or inside rerun.tolerance without siblings), or "DIFFERS from epoch
k" with the metric, both values, the bound and the likely cause. It is logged on both runs;
the command exits 1 when a rerun differs.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlp_experiments import cli, provenance
from mlp_experiments.cli import described
from mlp_experiments.config.checks import check_section_ranges
from mlp_experiments.config.ranges import at_least, ranged
from mlp_experiments.errors import UserError, exit_on_mistake
from mlp_experiments.evaluate import RUN_ID, check_store
from mlp_experiments.provenance import git
from mlp_experiments.redact import redact
from mlp_experiments.rerun.verdict import Verdict, judge, likely_cause
from mlp_experiments.stores import sqlite_path

log = logging.getLogger("mlp_experiments")


class Environment(enum.StrEnum):
    recorded = "recorded"  # refuse when this environment's uv.lock is not the run's
    current = "current"  # rerun in this environment all the same


@dataclass
class RerunSettings:
    run_id: str = described("", "the run to rerun (its id, on the run's page)")
    study: str = described("", "instead of run_id: a study whose runs to rerun, as an audit")
    sample: int = ranged(3, at_least(1), example=5,
                         help="how many of the study's runs to rerun, drawn at random (seed 0)")
    environment: Environment = described(
        Environment.recorded, "recorded: refuse when this environment's uv.lock differs from "
        "the run's; current: rerun in this environment anyway")
    tolerance: float = ranged(0.005, at_least(0), example=0.01,
                              help="the largest difference of a metric that is not a finding, "
                                   "for a run without sibling seeds (docs/rerun.md)")


@dataclass
class RerunKeys:
    rerun: RerunSettings = field(default_factory=RerunSettings)
    tracking: cli.TrackingStore = field(default_factory=cli.TrackingStore)


COMMAND = cli.Command(
    "rerun", "Rebuild a run's code from its record, train it again and compare every epoch: "
    "identical, within seed noise, or where it differs and why.", RerunKeys,
)

# Run with the Python path of the rebuilt code: the recorded code composes and trains, through
# the functions every commit that records its overrides has.
TRAIN_AGAIN = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from mlp_experiments.config.compose import compose_config
from mlp_experiments.data import load_dataset
from mlp_experiments.errors import UserError
from mlp_experiments.train import config_identity, train
overrides, data_digest, config_hash = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    cfg = compose_config(overrides)
    found = load_dataset(cfg.data).digest
    if found != data_digest:
        answer = {"refused": "data", "digest": found}
    elif config_identity(cfg) != config_hash:
        answer = {"refused": "config"}
    else:
        answer = {"run_id": train(cfg, overrides=overrides).run_id}
except UserError as error:
    answer = {"refused": "input", "message": str(error)}
except KeyboardInterrupt:  # its run is closed KILLED; the command says the rest
    sys.exit(130)
print(json.dumps(answer))
"""


# ---------------------------------------------------------------------------- the record


def recorded_tags(uri: str, run_id: str) -> dict[str, str] | None:
    """The run's tags (None: no such run), read without importing MLflow (seconds) where the
    store allows: an MLflow server's REST API, or a SQLite store's tables."""
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/api/2.0/mlflow/runs/get?run_id={run_id}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                run = json.load(answer)["run"]
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise UserError(f"tracking.uri={redact(uri)}: the server answered "
                            f"{error.code}.") from None
        return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
    database = sqlite_path(uri)
    if database is None:
        return mlflow_tags(uri, run_id)
    # MLflow's SQL schema (runs, tags), read only: its client takes seconds to import.
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as store:
        if not store.execute("SELECT 1 FROM runs WHERE run_uuid = ? AND lifecycle_stage = "
                             "'active'", (run_id,)).fetchone():
            return None
        return dict(store.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))


def mlflow_tags(uri: str, run_id: str) -> dict[str, str] | None:
    import mlflow

    try:
        return mlflow.MlflowClient(uri).get_run(run_id).data.tags
    except mlflow.exceptions.MlflowException:
        return None


def check_record(run_id: str, tags: dict[str, str] | None, uri: str) -> None:
    """A training run recorded with what a rerun needs, else one message saying why not."""
    if tags is None:
        raise UserError(f"No MLflow run {run_id} in {redact(uri)}: check the id (the MLflow UI "
                        f"shows it on the run page) and tracking.uri.")
    if "config_hash" not in tags:
        kind = tags.get("sweep.kind") or tags.get("sweep.stage")
        hint = (f"; a study's runs are rerun with rerun.study={tags['optuna.study_name']}"
                if "optuna.study_name" in tags else "")
        raise UserError(f"Run {run_id} is not a training run ({kind or 'no config_hash tag'})"
                        f"{hint}.")
    if not tags.get("overrides", "").startswith("[") or "env.uv_lock_sha256" not in tags:
        raise UserError(f"Run {run_id} recorded no overrides or environment (it was recorded "
                        f"before runs had them, or trained from Python rather than mlp-train "
                        f"or mlp-sweep): train it again (its params and config.yaml say how).")
    if tags["git_commit"] == "unknown":
        raise UserError(f"Run {run_id} recorded no commit (it ran outside a git checkout, "
                        f"e.g. from an image without MLP_EXPERIMENTS_GIT_COMMIT).")


def checked_record(uri: str, run_id: str, environment: Environment) -> dict[str, str]:
    """The run's tags, once they show it can be rerun here."""
    tags = recorded_tags(uri, run_id)
    check_record(run_id, tags, uri)
    check_environment(run_id, tags, environment)
    return tags


def check_environment(run_id: str, tags: dict[str, str], environment: Environment) -> None:
    recorded, current = tags["env.uv_lock_sha256"], provenance.lock_digest()
    if recorded != current and environment == Environment.recorded:
        raise UserError(
            f"Run {run_id} ran with another uv.lock (sha256 {recorded[:12]}, this environment's "
            f"{current[:12]}): check out the run's commit's uv.lock and `uv sync`, or pass "
            f"rerun.environment=current to rerun in this environment (its verdict then names "
            f"the environment)."
        )


# ---------------------------------------------------------------------------- the code


@contextmanager
def rebuilt_code(run_id: str, commit: str, diff: str) -> Iterator[Path]:
    """A temporary worktree of `commit` with `diff` applied; removed on every way out."""
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise UserError(f"Run {run_id} ran commit {commit}, which this clone does not have: "
                        f"fetch it (git fetch --all, or from the clone that made the run), "
                        f"then run again.")
    with tempfile.TemporaryDirectory(prefix="mlp-rerun-") as folder:
        code = Path(folder) / "code"
        added = git("worktree", "add", "--detach", "--quiet", str(code), commit)
        if added.returncode != 0:
            raise UserError(f"Cannot check out commit {commit} in {code}: "
                            f"{added.stderr.strip()}")
        try:
            if diff:
                patch = Path(folder) / "code.diff"
                patch.write_text(diff)
                applied = git("apply", "--binary", str(patch), cwd=code)
                if applied.returncode != 0:
                    reason = applied.stderr.strip().partition("\n")[0]
                    raise UserError(f"Run {run_id}'s uncommitted changes (code.diff) do not "
                                    f"apply to commit {commit}: {reason}")
            yield code
        finally:
            git("worktree", "remove", "--force", str(code))
            git("worktree", "prune")


# ---------------------------------------------------------------------------- training again


def train_again(code: Path, run_id: str, tags: dict[str, str], run, uri: str,
                experiment: str) -> str:
    """Train the run's overrides with the rebuilt code as a new run; its id."""
    overrides = [*json.loads(tags["overrides"]), f"tracking.uri={uri}",
                 f"tracking.experiment={experiment}",
                 f"tracking.run_name=rerun-{run.info.run_name}", "tracking.plots=false",
                 "tracking.log_model=false", "trainer.resume=false",
                 f"trainer.checkpoint_dir={code.parent / 'checkpoints'}"]
    command = [sys.executable, "-c", TRAIN_AGAIN, json.dumps(overrides), tags["data_digest"],
               tags["config_hash"]]
    environment = {**os.environ, "PYTHONPATH": str(code)}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        output, _ = child.communicate()
    finally:
        if child.poll() is None:  # this process was stopped alone: the training stops too
            child.send_signal(signal.SIGINT)
            child.wait()
    lines = output.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if answer.get("refused") == "data":
        raise UserError(f"Run {run_id}'s data has changed: digest {tags['data_digest']} when it "
                        f"ran, {answer['digest']} now (data.root and the files it read are in "
                        f"its dataset inputs). Restore the files to rerun it.")
    if answer.get("refused") == "input":
        raise UserError(f"The rerun of {run_id} stopped: {answer['message']}")
    if answer.get("refused") == "config":
        raise UserError(f"Run {run_id}'s recorded overrides do not compose its configuration "
                        f"with its code (config_hash {tags['config_hash']}): it was composed "
                        f"from a config folder the record does not hold (-cd, -cp).")
    if "run_id" not in answer:
        raise UserError(f"The rerun of {run_id} ended with exit code {child.returncode} before "
                        f"it recorded a run (its output is above).")
    return answer["run_id"]


def rerun_one(client, run_id: str, tags: dict[str, str], settings: RerunSettings,
              uri: str) -> Verdict:
    """Rerun a run whose record was checked (`tags`, from `checked_record`) and judge it."""
    import mlflow

    original = client.get_run(run_id)
    experiment = client.get_experiment(original.info.experiment_id).name
    diff = ""
    if tags.get("git_dirty") == "true":
        with tempfile.TemporaryDirectory() as folder:
            try:
                diff = Path(client.download_artifacts(run_id, "code.diff", folder)).read_text()
            except (mlflow.exceptions.MlflowException, OSError):
                raise UserError(f"Run {run_id} ran uncommitted changes but its code.diff is "
                                f"missing from its artifacts.") from None
    log.info("rerun of %s (%s): commit %s%s", run_id, original.info.run_name,
             tags["git_commit"][:12], " with its uncommitted changes" if diff else "")
    with rebuilt_code(run_id, tags["git_commit"], diff) as code:
        rerun_id = train_again(code, run_id, tags, original, uri, experiment)
    verdict = judge(client, original, rerun_id, settings.tolerance)
    if verdict.kind == "differs":
        cause = likely_cause(tags, client.get_run(rerun_id).data.tags, original.data.params)
        verdict = Verdict(verdict.kind, f"{verdict.detail}; likely cause: {cause}")
    for tag_run, tags_set in ((rerun_id, {"rerun.of": run_id}),
                              (run_id, {"rerun.latest": rerun_id})):
        for key, value in {**tags_set, "rerun.verdict": verdict.kind,
                           "rerun.detail": verdict.detail}.items():
            client.set_tag(tag_run, key, value)
    return verdict


def study_runs(client, study: str) -> list[str]:
    """The training runs under a study's parent run, at any depth (stage, variant), finished."""
    from mlflow.entities import ViewType

    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`optuna.study_name` = '{study}'", run_view_type=ViewType.ACTIVE_ONLY)
    if not parents:
        raise UserError(f"No study {study} in this tracking store: mlp-sweep records a study's "
                        f"parent run with its name (the MLflow UI lists them).")
    found, frontier = [], [parents[0]]
    while frontier:
        parent = frontier.pop()
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        frontier += children
        found += [c.info.run_id for c in children
                  if "config_hash" in c.data.tags and c.info.status == "FINISHED"]
    return sorted(found)


def sampled_study_runs(client, settings: RerunSettings) -> list[str]:
    candidates = study_runs(client, settings.study)
    return sorted(random.Random(0).sample(candidates, min(settings.sample, len(candidates))))


def check_settings(settings: RerunSettings) -> None:
    if bool(settings.run_id) == bool(settings.study):
        raise UserError("Name one run, rerun.run_id=<id>, or one study, rerun.study=<name>.")
    if settings.run_id and not RUN_ID.fullmatch(settings.run_id):
        raise UserError(f"rerun.run_id={settings.run_id}: an MLflow run id is 32 hexadecimal "
                        f"digits (the MLflow UI shows it on the run page).")
    check_section_ranges("rerun", settings, RerunSettings)


def main(arguments: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # code.diff's
    try:
        cfg, _ = cli.parse(COMMAND, sys.argv[1:] if arguments is None else arguments)
        settings, uri = cfg.rerun, cfg.tracking.uri
        check_settings(settings)
        check_store(uri)
        records = {}
        if settings.run_id:  # the record checked before MLflow is imported
            records[settings.run_id] = checked_record(uri, settings.run_id, settings.environment)
        import mlflow

        client = mlflow.MlflowClient(uri)
        if settings.study:
            records = {run_id: checked_record(uri, run_id, settings.environment)
                       for run_id in sampled_study_runs(client, settings)}
        verdicts = [(run_id, rerun_one(client, run_id, tags, settings, uri))
                    for run_id, tags in records.items()]
    except UserError as error:
        exit_on_mistake(error)
    except KeyboardInterrupt:
        print("interrupted: the rerun's run is closed KILLED, its worktree removed",
              file=sys.stderr)
        raise SystemExit(130) from None
    for run_id, verdict in verdicts:
        print(f"{run_id}: {verdict}")
    if any(verdict.kind == "differs" for _, verdict in verdicts):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
