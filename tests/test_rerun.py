"""mlp-rerun rebuilds a run's code from its record (commit and diff, in a temporary worktree),
trains it again and judges the rerun against the original, epoch by epoch; it refuses with one
message what it cannot rebuild. Each test records its runs with the code of a clone of this
repository (conftest.clone), so that the commit and the diff are the clone's."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import (
    code_environment,
    default_sigint,
    git,
    train_from,
    with_code,
    write_tiny_release,
)
from mlflow import MlflowClient
from test_faults import wait_for

from mlp_experiments.rerun.verdict import compare

DETERMINISTIC = ("trainer.deterministic=true", "trainer.epochs=2")


def rerun(checkout, folder, *arguments):
    return with_code(checkout, folder, "rerun", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
                     *arguments, timeout=600)


def sigint_pending(pid: int) -> bool:
    """Does a SIGINT wait for the (stopped) process? (Its pending signals in /proc: a kill()
    to a process is in ShdPnd, one to a thread in SigPnd.)"""
    status = Path(f"/proc/{pid}/status").read_text()
    pending = re.findall(r"^(?:Sig|Shd)Pnd:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return any(int(mask, 16) & 1 << (signal.SIGINT - 1) for mask in pending)


def worktrees(checkout) -> list[str]:
    return git(checkout, "worktree", "list").stdout.strip().splitlines()


def test_a_run_from_a_changed_tree_reruns_identical_with_its_diff_in_its_environment(
        clone, tmp_path):
    """The changes decide the result (SGD's learning rate in conf/): without its diff the
    rerun would compose another configuration and be refused. The tree is clean again when
    the rerun runs: only the record carries the change. The run's uv.lock differs from this
    environment's: refused, until rerun.environment=current accepts it."""
    sgd = clone / "conf" / "optimizer" / "sgd.yaml"
    sgd.write_text(sgd.read_text().replace("lr: 0.5", "lr: 0.3"))
    lock = clone / "uv.lock"
    lock.write_text(lock.read_text() + "\n# another resolution\n")
    original = train_from(clone, tmp_path, *DETERMINISTIC)
    git(clone, "checkout", "--", ".", check=True)
    done = rerun(clone, tmp_path, f"rerun.run_id={original}")
    assert done.returncode == 1 and "ran with another uv.lock" in done.stderr, done.stderr
    assert "rerun.environment=current" in done.stderr
    done = rerun(clone, tmp_path, f"rerun.run_id={original}", "rerun.environment=current")
    assert done.returncode == 0, done.stderr
    assert "with its uncommitted changes" in done.stderr
    assert f"{original}: identical: every metric at every epoch" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(original).data.params["optimizer.lr"] == "0.3"
    again = client.get_run(client.get_run(original).data.tags["rerun.latest"])
    assert again.data.tags["rerun.of"] == original
    assert again.data.tags["rerun.verdict"] == "identical"
    assert client.get_run(original).data.tags["rerun.verdict"] == "identical"
    assert len(worktrees(clone)) == 1  # the temporary worktree is gone


def test_a_run_whose_data_changed_is_refused_naming_both_digests(clone, tmp_path):
    root = write_tiny_release(tmp_path / "release")
    data = ("data=mnist", f"data.root={root}", "data.val_size=20", "data.verify=false")
    original = train_from(clone, tmp_path, *data)
    recorded = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        original).data.tags["data_digest"]
    write_tiny_release(root, test=50)  # the test split has changed since
    done = rerun(clone, tmp_path, f"rerun.run_id={original}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: Run {original}'s data has changed: digest {recorded}")
    assert len(worktrees(clone)) == 1


def test_a_run_of_a_commit_this_clone_lacks_is_refused_with_the_fix(clone, tmp_path):
    other = tmp_path / "other"
    git(clone, "clone", "--quiet", str(clone), str(other), check=True)
    (other / "NOTE.md").write_text("a commit only this clone has\n")
    git(other, "add", "NOTE.md", check=True)
    git(other, "commit", "--quiet", "-m", "local", check=True)
    original = train_from(other, tmp_path)
    done = rerun(clone, tmp_path, f"rerun.run_id={original}")
    assert done.returncode == 1, done.stderr
    assert "which this clone does not have: fetch it" in done.stderr
    assert len(worktrees(clone)) == 1


def test_an_edited_metric_is_reported_as_differing_at_its_epoch(clone, tmp_path):
    original = train_from(clone, tmp_path, *DETERMINISTIC)
    with sqlite3.connect(tmp_path / "mlflow.db") as store:  # someone edits the record
        store.execute("UPDATE metrics SET value = value + 0.05 WHERE run_uuid = ? AND "
                      "key = 'val_acc' AND step = 2", (original,))
    done = rerun(clone, tmp_path, f"rerun.run_id={original}")
    assert done.returncode == 1, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{original}: DIFFERS from epoch 2: val_acc original")
    assert "likely cause: nothing the record shows changed" in line
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(original).data.tags["rerun.verdict"] == "differs"


def test_ctrl_c_during_a_rerun_removes_its_worktree(clone, tmp_path):
    """The Ctrl-C lands while the rerun trains: its training is frozen (SIGSTOP) after its first
    epoch, before the Ctrl-C, so that no busy machine lets it finish first. The command gets a
    terminal's Ctrl-C (default_sigint): started from a CI step's background job it inherited
    SIGINT ignored, and never passed the Ctrl-C on (seen in CI under two pytest workers)."""
    import psutil

    original = train_from(clone, tmp_path, "data.train_size=5000",
                          "model.hidden_sizes=[256,256]", "trainer.epochs=40")
    command = [sys.executable, "-m", "mlp_experiments.rerun", f"rerun.run_id={original}",
               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    log = tmp_path / "rerun.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env=code_environment(clone), preexec_fn=default_sigint)
    process.log = log  # what wait_for shows if the command ends too soon
    try:
        wait_for(lambda: "epoch 1/40" in log.read_text(), process, every=0.02)  # in its worktree
        (training,) = [child for child in psutil.Process(process.pid).children()
                       if "-c" in child.cmdline()]
        training.suspend()
        threads = [psutil.Process(thread.id) for thread in training.threads()]
        # a thread not yet stopped would take the Ctrl-C, not hold it
        wait_for(lambda: all(t.status() == psutil.STATUS_STOPPED for t in threads), every=0.02)
        assert "epoch 40/40" not in log.read_text(), "the rerun trained to its end first"
        (_, rebuilt) = worktrees(clone)
        process.send_signal(signal.SIGINT)  # to the command alone: it stops its training too
        wait_for(lambda: sigint_pending(training.pid), process, timeout=60, every=0.02)
        training.resume()
        assert process.wait(timeout=300) == 130
    finally:  # no stopped training outlives a failed test
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # stopped ones too
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()
    assert len(worktrees(clone)) == 1 and not Path(rebuilt.split()[0]).exists()


def test_bad_input_is_one_message_before_mlflow_or_torch_is_imported(clone, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    original = train_from(clone, tmp_path)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mlp-experiments").experiment_id
    study = client.create_run(experiment, tags={"optuna.study_name": "search",
                                                "sweep.kind": "search"}).info.run_id
    (tmp_path / "garbage.db").write_text("not a database")
    cases = [
        ([f"rerun.run_id={'0' * 32}", f"tracking.uri={uri}"], "No MLflow run 000"),
        ([f"rerun.run_id={study}", f"tracking.uri={uri}"],
         "is not a training run (search); a study's runs are rerun with rerun.study=search"),
        ([f"rerun.run_id={original}", f"tracking.uri=sqlite:///{tmp_path / 'garbage.db'}"],
         "is not an SQLite database"),
        (["rerun.run_id=abc", f"tracking.uri={uri}"], "32 hexadecimal digits"),
        ([f"rerun.run_id={original}", "rerun.study=search"], "Name one run"),
        ([f"rerun.run_id={original}", "rerun.sample=0"], "rerun.sample=0 must be at least 1"),
    ]
    script = textwrap.dedent(f"""\
        import sys
        from mlp_experiments.rerun import command as rerun
        for arguments, message in {cases!r}:
            try:
                rerun.main(arguments)
            except SystemExit as stop:
                assert message in str(stop.code) and str(stop.code).count("\\n") == 0, stop.code
            else:
                raise AssertionError(arguments)
        print("imported:", "torch" in sys.modules, "mlflow" in sys.modules)
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, env=code_environment(clone))
    assert done.returncode == 0, done.stderr
    assert "imported: False False" in done.stdout


# ---------------------------------------------------------------------------- the verdict, on
# fabricated metrics with a known answer (benchmarks/rerun_verdicts.py: how often it is wrong)


def curves(**metrics: list[float]) -> dict[str, dict[int, float]]:
    return {name: dict(enumerate(values, start=1)) for name, values in metrics.items()}


ORIGINAL = curves(val_acc=[0.80, 0.84, 0.86], val_loss=[0.55, 0.45, 0.40])
SEEDS = [ORIGINAL, curves(val_acc=[0.79, 0.85, 0.862], val_loss=[0.56, 0.44, 0.41]),
         curves(val_acc=[0.81, 0.83, 0.858], val_loss=[0.54, 0.46, 0.39])]


def test_the_same_numbers_are_identical():
    assert compare(ORIGINAL, curves(val_acc=[0.80, 0.84, 0.86],
                                    val_loss=[0.55, 0.45, 0.40]), [], 0.005).kind == "identical"


def test_differences_inside_the_seeds_spread_are_seed_noise_even_past_the_tolerance():
    """val_loss moves by 0.005 at each epoch, more than the tolerance, less than the spread."""
    rerun = curves(val_acc=[0.81, 0.835, 0.861], val_loss=[0.545, 0.455, 0.395])
    verdict = compare(ORIGINAL, rerun, SEEDS, 0.001)
    assert verdict.kind == "within seed noise" and "spread of its 3 seeds" in str(verdict)


def test_without_seeds_the_tolerance_decides():
    rerun = curves(val_acc=[0.803, 0.84, 0.86], val_loss=[0.55, 0.45, 0.40])
    assert compare(ORIGINAL, rerun, [], 0.005).kind == "within seed noise"
    verdict = compare(ORIGINAL, rerun, [], 0.002)
    assert str(verdict) == ("DIFFERS from epoch 1: val_acc original 0.8, rerun 0.803, bound "
                            "0.002 (rerun.tolerance 0.002)")


def test_the_first_epoch_outside_the_seeds_spread_is_named():
    """The bound of a metric is its widest spread over the seeds (val_acc: 0.02, at epochs 1
    and 2), at every epoch: a narrow spread at one epoch is chance."""
    rerun = curves(val_acc=[0.80, 0.84, 0.875], val_loss=[0.55, 0.45, 0.40])
    assert compare(ORIGINAL, rerun, SEEDS, 0.002).kind == "within seed noise"
    rerun = curves(val_acc=[0.80, 0.84, 0.89], val_loss=[0.55, 0.45, 0.40])
    assert str(compare(ORIGINAL, rerun, SEEDS, 0.002)).startswith(
        "DIFFERS from epoch 3: val_acc original 0.86, rerun 0.89, bound 0.02 (the spread of "
        "its 3 seeds, at least rerun.tolerance 0.002)")
    assert compare(ORIGINAL, rerun, SEEDS, 0.04).kind == "within seed noise"  # the floor


def test_a_rerun_that_lacks_an_epoch_differs_there():
    rerun = curves(val_acc=[0.80, 0.84], val_loss=[0.55, 0.45])
    assert str(compare(ORIGINAL, rerun, [], 0.005)).startswith(
        "DIFFERS from epoch 3: val_acc original 0.86, rerun nan")


def test_a_study_is_audited_one_line_per_rerun(clone, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "seeds.yaml").write_text(textwrap.dedent("""\
        study_name: seeds
        overrides: [data=synthetic, trainer.epochs=2, trainer.deterministic=true]
        space:
          trainer.seed: choice(0, 1)
        sampler: grid
        pruner: none
        """))
    done = with_code(clone, tmp_path, "sweep", f"sweep={tmp_path / 'seeds.yaml'}",
                     f"sweep.storage=sqlite:///{tmp_path / 'optuna.db'}", f"tracking.uri={uri}",
                     timeout=600)
    assert done.returncode == 0, done.stderr
    done = rerun(clone, tmp_path, "rerun.study=seeds", "rerun.sample=2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(": identical: every metric" in line for line in lines)
    assert len(worktrees(clone)) == 1


def test_a_diff_that_no_longer_applies_is_refused_and_leaves_no_worktree(clone, tmp_path):
    engine = clone / "mlp_experiments" / "engine.py"
    engine.write_text(engine.read_text() + "\n# a local change\n")
    original = train_from(clone, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    stored = Path(client.get_run(original).info.artifact_uri.removeprefix("file://"))
    (stored / "code.diff").write_text("--- a/nothing\n+++ b/nothing\n@@ -1 +1 @@\n-x\n+y\n")
    done = rerun(clone, tmp_path, f"rerun.run_id={original}")
    assert done.returncode == 1, done.stderr
    assert "uncommitted changes (code.diff) do not apply to commit" in done.stderr
    assert len(worktrees(clone)) == 1
