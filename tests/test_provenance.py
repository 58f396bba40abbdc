"""A run's record holds what rebuilding it takes: the commit and the uncommitted changes of the
code that ran, the lock file's hash and the versions of Python, torch and CUDA."""

from pathlib import Path

from conftest import git, train_from
from mlflow import MlflowClient


def test_a_run_from_a_changed_tree_records_its_diff_which_applies_to_its_commit(clone, tmp_path):
    engine = clone / "mlp_experiments" / "engine.py"
    engine.write_text(engine.read_text() + "\n# a local change\n")
    (clone / "mlp_experiments" / "scratch_note.py").write_text("NOTE = 1\n")  # untracked
    run_id = train_from(clone, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_run(run_id).data.tags
    head = git(clone, "rev-parse", "HEAD").stdout.strip()
    assert tags["git_commit"] == head and tags["git_dirty"] == "true"
    assert len(tags["env.uv_lock_sha256"]) == 64 and tags["env.python"].count(".") == 2
    assert tags["env.torch"] and tags["env.cuda"]
    assert tags["env.cudnn"] == "unused" and tags["device"] == "cpu"  # CPU runs never load cuDNN
    diff = Path(client.download_artifacts(run_id, "code.diff", str(tmp_path)))
    assert "+# a local change" in diff.read_text() and "+NOTE = 1" in diff.read_text()
    # the diff rebuilds the tree: on a fresh checkout of the commit it applies
    git(clone, "checkout", "--quiet", "--", ".", check=True)
    (clone / "mlp_experiments" / "scratch_note.py").unlink()
    git(clone, "apply", str(diff), check=True)
    assert engine.read_text().endswith("# a local change\n")


def test_a_run_from_a_clean_tree_says_so_and_logs_no_diff(clone, tmp_path):
    run_id = train_from(clone, tmp_path, "trainer.deterministic=true")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["git_dirty"] == "false"
    assert run.data.params["trainer.deterministic"] == "True"
    assert "code.diff" not in {a.path for a in client.list_artifacts(run_id)}
