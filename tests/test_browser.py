"""End to end in a browser: `python -m mlp_experiments.ui` serves a fresh store of real runs and a
small sweep, and headless Chromium must render them in the MLflow UI and in optuna-dashboard.

MLflow 3.17 shows an experiment either as a GenAI app (traces, evaluation runs) or as model
training, by the GenAI / Model training switch at the top of its sidebar, which a browser remembers
and which starts on GenAI; it does not read the experiment's kind (`mlflow.experimentKind`, which
the runs set). `mlp-ui`'s MLflow (mlflow_app.py) starts a fresh browser on Model training: every
test browses as a fresh browser.

Every page is saved as a full-page screenshot under $SCREENSHOT_DIR (default
<temporary folder>/mlp-experiments-screenshots), for CI to keep (docs/ui/ has some of them). The
selectors follow the pinned MLflow (3.x, React with ag-grid and plotly) and optuna-dashboard (MUI
and plotly) front ends: see the notes at each test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import answers, default_sigint, two_free_ports

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
# Outside the source tree, which the tests leave as they found it (.ci/run checks).
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR")
                   or Path(tempfile.gettempdir()) / "mlp-experiments-screenshots")
HOST = "127.0.0.1"
START_TIMEOUT_S = 120  # both servers answer HTTP (MLflow starts 4 workers: slow on a busy CI box)
STOP_TIMEOUT_S = 60  # the UI command exits after SIGINT (it gives each server 10 s, then kills)
UI_TIMEOUT_MS = 45_000  # a page's first render: the React bundles are large
VIEWPORT = {"width": 1440, "height": 900}  # a laptop's screen: legible when the README scales it
EXPERIMENT = "browser"
STUDY = "browser_grid"
EPOCHS = 3  # of the standalone runs: three points on each metric chart

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: "
                       "apt-get install chromium (the tests never download a browser)"),
]

SWEEP = f"""
study_name: {STUDY}
variants:
  sgd: [optimizer=sgd, optimizer.lr=0.1]
  adam: [optimizer=adam]
sampler: grid
pruner: none
"""

# name -> overrides of the standalone runs (the first logs the model, as a user's run would)
RUNS = {
    "browser-sgd-logged": [f"trainer.epochs={EPOCHS}", "optimizer.lr=0.1",
                           "tracking.log_model=true"],
    "browser-sgd-slow": [f"trainer.epochs={EPOCHS}", "optimizer.lr=0.05", "trainer.seed=1"],
    "browser-adam": ["trainer.epochs=2", "optimizer=adam", "optimizer.lr=0.002"],
}


# ---------------------------------------------------------------------------- the store


@dataclass
class Store:
    folder: Path
    tracking_uri: str
    storage: str
    experiment_id: str = ""
    run_ids: dict[str, str] = field(default_factory=dict)  # run name -> id, trials included
    params: dict[str, dict[str, str]] = field(default_factory=dict)  # run name -> params
    parent_name: str = f"study-{STUDY}"
    trial_names: list[str] = field(default_factory=list)
    # trial name -> its val_acc history, (step, value) per epoch
    val_acc: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A dedicated MLflow SQLite store with three real runs and a grid sweep of two trials
    (children of the sweep's parent run), and the sweep's Optuna SQLite storage."""
    from mlflow import MlflowClient

    from mlp_experiments.config.compose import compose_config
    from mlp_experiments.stores import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
    from mlp_experiments.sweep import spec
    from mlp_experiments.sweep.command import run_sweep
    from mlp_experiments.train import train

    folder = tmp_path_factory.mktemp("browser")
    store = Store(folder, f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'optuna.db'}")
    common = ["data=synthetic", "trainer.device=cpu", f"trainer.checkpoint_dir={folder / 'ck'}",
              f"tracking.uri={store.tracking_uri}", f"tracking.experiment={EXPERIMENT}",
              "tracking.log_model=false"]
    (folder / "sweeps").mkdir()
    (folder / "sweeps" / "browser.yaml").write_text(SWEEP)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(spec, "SWEEPS_DIR", folder / "sweeps")
        for name, overrides in RUNS.items():
            result = train(compose_config([*common, *overrides, f"tracking.run_name={name}"]))
            assert result.outcome == "completed"
        study = run_sweep(["sweep=browser", f"sweep.storage={store.storage}", *common,
                                  "trainer.epochs=2"])
    assert len(study.trials) == 2

    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    store.experiment_id = experiment.experiment_id
    runs = client.search_runs([store.experiment_id])
    store.run_ids = {run.info.run_name: run.info.run_id for run in runs}
    store.params = {run.info.run_name: run.data.params for run in runs}
    parent_id = store.run_ids[store.parent_name]
    assert parent_id == study.user_attrs["mlflow_parent_run_id"]
    store.trial_names = sorted(run.info.run_name for run in runs
                               if run.data.tags.get("mlflow.parentRunId") == parent_id)
    assert store.trial_names == [f"{STUDY}-0", f"{STUDY}-1"]
    assert set(store.run_ids) == {*RUNS, store.parent_name, *store.trial_names}
    store.val_acc = {name: [(m.step, m.value) for m in client.get_metric_history(
                         store.run_ids[name], "val_acc")] for name in store.trial_names}
    assert all(len(history) == 2 for history in store.val_acc.values())  # trainer.epochs=2
    return store


# ---------------------------------------------------------------------------- the servers


@dataclass
class Servers:
    process: subprocess.Popen
    log: Path
    port: int
    dashboard_port: int

    @property
    def mlflow(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def nothing_listens(port: int) -> bool:
    """No server accepts connections on the port, and a new one could bind it now."""
    with socket.socket() as probe:
        probe.settimeout(2)
        if probe.connect_ex((HOST, port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def servers(store) -> Servers:
    """`python -m mlp_experiments.ui` on two free loopback ports, serving the store; stopped by
    test_sigint_stops_both_servers_and_frees_their_ports (or here, if that did not run)."""
    port, dashboard_port = two_free_ports()
    log = store.folder / "ui.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlp_experiments.ui", f"ui.port={port}",
             f"ui.dashboard_port={dashboard_port}", f"ui.host={HOST}",
             f"tracking.uri={store.tracking_uri}", f"ui.storage={store.storage}"],
            cwd=store.folder, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: nothing it starts outlives the tests
            preexec_fn=default_sigint,
        )
    started = Servers(process, log, port, dashboard_port)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (answers(f"{started.mlflow}/health") and answers(f"{started.dashboard}/")):
            if process.poll() is not None:
                pytest.fail(f"the UI command exited with {process.returncode}:\n"
                            f"{started.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the servers did not answer within {START_TIMEOUT_S} s:\n"
                            f"{started.output()}")
            time.sleep(1)
        printed = started.output()
        assert f"MLflow UI: {started.mlflow}" in printed
        assert f"Optuna dashboard: {started.dashboard}" in printed
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in group_members(process.pid):  # what it left behind: ours, stop it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(servers):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              timeout=60_000)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh page (no state from other tests); on a failure, the page as it was is saved."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:
        screenshot(page, f"{request.node.name}-FAILED")
    context.close()


@pytest.fixture
def training_page(page, servers):
    """A fresh page on MLflow's experiments list, in the Model training view it opens on."""
    open_training_view(page, servers)
    return page


def open_training_view(page, servers) -> None:
    """Open MLflow as a fresh browser does: `mlp-ui`'s MLflow (mlflow_app.py) starts it on the
    Model training view, with no click. Then close the MLflow Assistant panel, which opens by
    itself on a browser's first visit and would take a quarter of every screenshot."""
    page.goto(f"{servers.mlflow}/#/experiments")
    page.get_by_role("link", name="Model registry").wait_for()  # only the training view has it
    assistant_hint = page.get_by_text("Ask questions about your experiments")
    assistant_hint.wait_for()
    page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]').click()
    assistant_hint.wait_for(state="hidden")


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


def grid_row(page, run_id: str):
    """The runs table's row of a run. ag-grid splits a row over its pinned and scrolled column
    containers, each a [role=row] with the run's id: the first is the pinned one (checkbox,
    name)."""
    return page.locator(f'[role="row"][row-id="{run_id}"]').first


def experiment_link(page, store):
    """The experiment's link in the experiments list."""
    return page.locator(f'a[href="#/experiments/{store.experiment_id}"]', has_text=EXPERIMENT)


def open_runs_table(page, servers, store) -> None:
    page.goto(f"{servers.mlflow}/#/experiments/{store.experiment_id}")
    grid_row(page, store.run_ids[store.parent_name]).wait_for()


def experiment_view(page, store) -> str:
    """Which view the experiment page shows, once it shows one: "genai" (its sidebar offers
    Evaluation runs; the page opens on a traces overview) or "training" (the runs table)."""
    genai = page.get_by_text("Evaluation runs", exact=True)
    runs_table = grid_row(page, store.run_ids[store.parent_name])
    genai.or_(runs_table).first.wait_for()
    return "genai" if genai.count() else "training"


def click_to(page, target, url: re.Pattern) -> None:
    """Click `target` until the page is at `url`. On a busy machine a click can land while React
    replaces the element (the press on one node, the release on its successor): no click event,
    no navigation (seen in CI on the compare view's metric link). A user clicks again too."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for _ in range(3):
        if url.search(page.url):  # there, if only after the last wait
            return
        target.click()
        with contextlib.suppress(PlaywrightTimeoutError):
            page.wait_for_url(url, timeout=UI_TIMEOUT_MS / 3)
    assert url.search(page.url), f"three clicks on {target} did not lead to {url.pattern}"


def unfold(parent_row) -> None:
    """Click the fold toggle: the button before the name in the parent's name cell."""
    parent_row.locator('[col-id="attributes.`Run Name`"] button').first.click()


def artifact_node(name: str) -> str:
    """The artifact tree's entry (a file or a folder) named `name`."""
    return f'[data-testid="artifact-tree-node"][artifact-name="{name}"]'


def wait_for_artifact_tree_to_settle(page) -> None:
    """The artifact tree unfolds a folder with an animation, its entries overlapping until it
    ends: wait until each entry stands below the one before it, for the screenshot."""
    page.wait_for_function("""() => {
        const boxes = [...document.querySelectorAll('[data-testid="artifact-tree-node"]')]
            .map(node => node.getBoundingClientRect());
        return boxes.every((box, i) => i === 0 || box.top >= boxes[i - 1].bottom - 1);
    }""")


def row_cells(page, label: str) -> list[str]:
    """The compare view's values in the row headed `label` (an HTML table)."""
    header = page.locator("th", has_text=re.compile(rf"^{re.escape(label)}$"))
    row = page.locator("tr", has=header).first
    row.wait_for()
    return [cell.strip() for cell in row.locator("td").all_inner_texts()]


# ---------------------------------------------------------------------------- MLflow UI


def test_the_experiment_opens_on_the_training_runs_table(training_page, servers, store):
    page = training_page  # on the experiments list, where choosing the view left it
    link = experiment_link(page, store)
    link.wait_for()
    assert link.inner_text().strip() == EXPERIMENT
    screenshot(page, "01-experiments")

    link.click()
    assert experiment_view(page, store) == "training"
    for name in [*RUNS, store.parent_name]:  # top-level rows (trials are folded under theirs)
        row = grid_row(page, store.run_ids[name])
        row.wait_for()
        assert row.get_by_text(name, exact=True).is_visible()
    assert page.get_by_text(f"{len(store.run_ids)} matching runs").is_visible()
    for genai_only in ("Evaluation runs", "Prompts & versions", "Token Usage"):
        assert page.get_by_text(genai_only, exact=True).count() == 0, genai_only
    screenshot(page, "02-runs-table")


def test_a_fresh_browser_opens_the_experiment_on_the_training_runs_table(page, servers, store):
    """With no click on the view switch (the other tests' fixture closes the Assistant)."""
    page.goto(f"{servers.mlflow}/#/experiments")
    experiment_link(page, store).click()
    view = experiment_view(page, store)
    screenshot(page, "02-fresh-browser-experiment")
    assert view == "training"


def test_run_page_shows_params_metrics_and_a_val_acc_chart(training_page, servers, store):
    page = training_page
    name = "browser-sgd-logged"
    run_id = store.run_ids[name]
    page.goto(f"{servers.mlflow}/#/experiments/{store.experiment_id}/runs/{run_id}")
    page.get_by_role("heading", name=name).wait_for()
    # Overview: the parameters' table, a [role=row] of [role=cell]s per parameter
    lr = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name="optimizer.lr", exact=True))
    lr.wait_for()
    assert lr.get_by_role("cell").all_inner_texts()[1].strip() == "0.1"
    epochs = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name="trainer.epochs", exact=True))
    assert epochs.get_by_role("cell").all_inner_texts()[1].strip() == str(EPOCHS)
    # ...and the metrics' table, each name a link to the model metrics
    metric = page.locator(f'a[href$="/runs/{run_id}/model-metrics"]', has_text="val_acc")
    assert metric.first.is_visible()
    lr.scroll_into_view_if_needed()  # the page scrolls inside the app: bring the row into view
    screenshot(page, "03-run-overview")

    page.get_by_role("tab", name="Model metrics").click()
    # A chart below the fold is not drawn: search for it, as a person would, to bring it up.
    page.get_by_placeholder("Search metric charts").fill("val_acc")
    # one chart card per metric, titled by an <h4>; its plotly line has a marker per epoch
    card = page.locator('[data-testid="experiment-view-compare-runs-card"]').filter(
        has=page.locator('h4[title="val_acc"]'))
    card.locator("svg.main-svg path.js-line").first.wait_for()
    assert card.locator("svg.main-svg path.point").count() >= EPOCHS
    assert card.get_by_text(f"{name} (val_acc)").is_visible()  # the legend
    screenshot(page, "04-run-model-metrics")


def test_artifacts_list_the_plots_and_show_one(training_page, servers, store):
    from mlflow import MlflowClient

    page = training_page
    run_id = store.run_ids["browser-sgd-logged"]
    page.goto(f"{servers.mlflow}/#/experiments/{store.experiment_id}/runs/{run_id}/artifacts")
    page.locator(artifact_node("plots")).click()  # a folder: expands in place
    for plot in ("learning_curves.png", "confusion_matrix.png", "predictions.png"):
        page.locator(artifact_node(plot)).wait_for()
    page.locator(artifact_node("learning_curves.png")).click()
    page.get_by_text("plots/learning_curves.png", exact=True).wait_for()
    # the preview: an <img> (from a blob of the downloaded file) that decoded
    preview = page.locator('.mlflow-artifact-right img[src^="blob:"]').first
    preview.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=preview.element_handle(), timeout=UI_TIMEOUT_MS)
    natural = preview.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    logged = Path(MlflowClient(store.tracking_uri).get_run(run_id).info.artifact_uri) / "plots"
    assert tuple(natural) == png_size(logged / "learning_curves.png")
    wait_for_artifact_tree_to_settle(page)
    screenshot(page, "05-run-artifacts")


def test_sweep_parent_run_unfolds_into_its_trials(training_page, servers, store):
    page = training_page
    open_runs_table(page, servers, store)
    parent = grid_row(page, store.run_ids[store.parent_name])
    trial_rows = [grid_row(page, store.run_ids[name]) for name in store.trial_names]
    assert all(row.count() == 0 for row in trial_rows)  # folded under the parent at first
    unfold(parent)
    parent_index = int(parent.get_attribute("row-index"))
    below = set()
    for name, row in zip(store.trial_names, trial_rows, strict=True):
        row.wait_for()
        assert row.get_by_text(name, exact=True).is_visible()
        below.add(int(row.get_attribute("row-index")))
    # right beneath the parent, before any other run
    assert below == set(range(parent_index + 1, parent_index + 1 + len(store.trial_names)))
    screenshot(page, "06-sweep-parent-and-trials")


def test_sweep_parent_run_opens_with_its_sweep_and_its_trials(training_page, servers, store):
    page = training_page
    open_runs_table(page, servers, store)
    parent_id = store.run_ids[store.parent_name]
    click_to(page, grid_row(page, parent_id).get_by_role("link", name=store.parent_name,
                                                         exact=True),
             re.compile(rf"/runs/{parent_id}$"))
    page.get_by_role("heading", name=store.parent_name, exact=True).wait_for()
    sampler = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name="sampler", exact=True))
    assert sampler.get_by_role("cell").all_inner_texts()[1].strip() == "grid"
    for name in store.trial_names:  # "Child runs" in About this run: a link to each trial
        link = page.get_by_role("link", name=name, exact=True)
        assert link.get_attribute("href").endswith(f"/runs/{store.run_ids[name]}")
    screenshot(page, "07-sweep-parent-run")


def test_compare_view_shows_the_selected_runs_and_their_params(training_page, servers, store):
    page = training_page
    open_runs_table(page, servers, store)
    for name in RUNS:
        row = grid_row(page, store.run_ids[name])
        row.locator("input.ag-checkbox-input").check()  # the row-selection box
    click_to(page, page.get_by_role("button", name="Compare", exact=True),
             re.compile(r"#/compare-runs\?"))
    query = urllib.parse.parse_qs(page.url.split("?", 1)[1])
    assert set(json.loads(query["runs"][0])) == {store.run_ids[name] for name in RUNS}
    page.get_by_text(f"Comparing {len(RUNS)} Runs from 1 Experiment").wait_for()
    names = row_cells(page, "Run Name:")
    assert sorted(names) == sorted(RUNS)
    for key in ("optimizer.lr", "optimizer._target_"):
        shown = dict(zip(names, row_cells(page, key), strict=True))
        assert shown == {name: store.params[name][key] for name in RUNS}
    page.locator("tr", has=page.locator("th", has_text=re.compile(r"^optimizer\.lr$"))).first \
        .scroll_into_view_if_needed()
    screenshot(page, "08-compare-runs")


def test_two_trials_val_acc_curves_are_compared_on_one_chart(training_page, servers, store):
    """Unfold the sweep, select its two trials, Compare, then their val_acc: MLflow's metric
    page draws one curve per run and tabulates each run's values."""
    page = training_page
    open_runs_table(page, servers, store)
    unfold(grid_row(page, store.run_ids[store.parent_name]))
    for name in store.trial_names:
        grid_row(page, store.run_ids[name]).locator("input.ag-checkbox-input").check()
    click_to(page, page.get_by_role("button", name="Compare", exact=True),
             re.compile(r"#/compare-runs\?"))
    page.get_by_text(f"Comparing {len(store.trial_names)} Runs from 1 Experiment").wait_for()
    click_to(page, page.locator('a[href^="#/metric"]', has_text=re.compile(r"^val_acc$")),
             re.compile(r"#/metric\?"))

    card = page.locator('[data-testid="experiment-view-compare-runs-card"]').filter(
        has_text="val_acc")
    for name in store.trial_names:  # the legend
        card.get_by_text(f"{name} (val_acc)", exact=True).wait_for()
    # One curve per run: its own shape (plotly also draws each unsmoothed, faintly, on the
    # same points). Not told apart by colour: MLflow picks a run's colour from a hash of its
    # id, and two runs share one now and then. Attached, not visible: a flat curve (adam's
    # val_acc is 1.0 at both epochs of this synthetic task) has an empty bounding box, which
    # Playwright calls hidden.
    curves = card.locator("svg.main-svg path.js-line")

    def shapes() -> set[str]:
        return set(curves.evaluate_all("paths => paths.map(path => path.getAttribute('d'))"))

    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000  # plotly draws the runs one by one
    while len(shapes()) < len(store.trial_names) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(shapes()) == len(store.trial_names)
    # the table below: each run's latest, min and max val_acc, "<value> (step=<step>)"
    for name, history in store.val_acc.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
        latest = row.get_by_role("cell").all_inner_texts()[1]
        value, step = re.fullmatch(r"(\S+) \(step=(\d+)\)", latest.strip()).groups()
        assert (int(step), float(value)) == history[-1]
    card.scroll_into_view_if_needed()
    screenshot(page, "09-trials-val-acc")


def test_sweep_report_opens_in_the_parent_runs_artifacts(training_page, servers, store):
    page = training_page
    parent_id = store.run_ids[store.parent_name]
    page.goto(f"{servers.mlflow}/#/experiments/{store.experiment_id}/runs/{parent_id}")
    page.get_by_role("tab", name="Artifacts").click()
    page.locator(artifact_node("report")).click()
    page.locator(artifact_node("report.md")).click()
    page.get_by_text("report/report.md", exact=True).wait_for()
    # MLflow renders markdown: the report's "# Study `browser_grid`" is a heading
    preview = page.locator(".mlflow-artifact-right")
    preview.get_by_role("heading", name=f"Study {STUDY}", level=1).wait_for()
    variants = preview.get_by_role("table").first
    for variant in ("adam", "sgd"):  # a row per variant of the comparison
        assert variants.get_by_role("cell", name=variant, exact=True).is_visible()
    for figure in ("learning_curves.png", "test_score.png"):  # the report's figures beside it
        page.locator(artifact_node(figure)).wait_for()
    wait_for_artifact_tree_to_settle(page)
    screenshot(page, "10-sweep-report")


# ---------------------------------------------------------------------------- optuna-dashboard


def test_optuna_dashboard_lists_the_study_and_shows_its_trials(page, servers, store):
    page.goto(f"{servers.dashboard}/dashboard")
    card = page.locator('a[href^="/dashboard/studies/"]', has_text=STUDY)
    card.wait_for()
    assert card.get_by_text("Direction: MAXIMIZE").is_visible()
    screenshot(page, "11-dashboard-studies")

    click_to(page, card, re.compile(r"/dashboard/studies/\d+$"))
    page.get_by_text(re.compile(rf"^{STUDY} \(id=\d+\)$")).wait_for()
    # the history chart: a plotly marker per completed trial
    history = page.locator("#plot-history")
    history.locator("path.point").first.wait_for()
    assert history.locator("path.point").count() >= len(store.trial_names)
    assert history.locator("text.xtitle").text_content() == "Trial"
    for number in range(len(store.trial_names)):  # the intermediate values' legend
        assert page.get_by_text(f"trial #{number}").first.is_visible()
    screenshot(page, "12-dashboard-study")

    page.goto(page.url + "/trials")
    for number in range(len(store.trial_names)):
        page.get_by_text(f"Trial {number}", exact=True).first.wait_for()
    screenshot(page, "13-dashboard-trials")


# ---------------------------------------------------------------------------- the command


@pytest.mark.parametrize("option", ["ui.port", "ui.dashboard_port"])
def test_a_port_in_use_is_refused_before_any_server_starts(tmp_path, option):
    ports = dict(zip(("ui.port", "ui.dashboard_port"), two_free_ports(), strict=True))
    (tmp_path / "optuna.db").touch()  # a study storage: the dashboard's port is checked too
    with socket.socket() as taken:
        taken.bind((HOST, ports[option]))
        taken.listen()
        finished = subprocess.run(
            [sys.executable, "-m", "mlp_experiments.ui", *(f"{k}={v}" for k, v in ports.items()),
             f"ui.host={HOST}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
             f"ui.storage=sqlite:///{tmp_path / 'optuna.db'}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    assert finished.returncode != 0
    assert "in use" in finished.stderr
    assert f"{option}={ports[option] + 1}" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no server was started


def test_sigint_stops_both_servers_and_frees_their_ports(servers):
    """Last in the module: the browser tests need the servers."""
    assert servers.process.poll() is None, servers.output()
    servers.process.send_signal(signal.SIGINT)  # as `kill -INT`; Ctrl-C signals the group
    try:
        servers.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_TIMEOUT_S} s after SIGINT:\n{servers.output()}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        group_members(servers.process.pid)
        or not all(nothing_listens(p) for p in (servers.port, servers.dashboard_port))
    ):
        time.sleep(0.5)
    assert group_members(servers.process.pid) == [], "processes left behind after SIGINT"
    assert nothing_listens(servers.port) and nothing_listens(servers.dashboard_port)
    # The command may start again at once on the ports it freed.
    from mlp_experiments.ui import check_port_free

    ports = {servers.port, servers.dashboard_port}
    check_port_free(HOST, servers.port, "ui.port", ports)  # raises UserError if it looks in use
    check_port_free(HOST, servers.dashboard_port, "ui.dashboard_port", ports)
