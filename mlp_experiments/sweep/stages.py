"""Comparisons in stages: every variant tuned on an equal budget, then raced over fresh seeds.

A comparison (a sweep file with `variants:`) that has a `tune:` block runs two stages, each of
Optuna studies in the sweep's storage, so that each resumes where it stopped and runs on
`sweep.n_workers` workers or a Slurm job array like any sweep:
* tune: one study per variant, `<study>.tune.<variant>`, of `tune.n_trials` trials over
  `tune.space` with the tuning sampler and pruner, every trial on the training seed `tune.seed`;
* evaluate: the study `<study>` itself: each variant at its tuned values, on fresh seeds
  (`tune.seed + 1`, `+ 2`, ...), handed out in rounds by the race (report/racing.py). Only these
  runs decide: choosing a configuration and judging it on the same seeds favours the variant
  whose tuning got luckiest.
A comparison with a `race:` block and no `tune:` block races its variants as they are, on seeds
0, 1, 2, ... In MLflow the runs nest as study -> stage -> variant -> runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlp_experiments.errors import UserError
from mlp_experiments.sweep.spec import SEED_KEY, sets, storage_url
from mlp_experiments.sweep.worker import describe


def is_staged(sweep: DictConfig) -> bool:
    return sweep.tune is not None or sweep.race is not None


def race_settings(sweep: DictConfig):
    """sweep.race (`race: {}` takes every default) as the racing module's settings."""
    from mlp_experiments.report.racing import RaceSettings

    values = OmegaConf.to_container(sweep.race) if sweep.race is not None else {}
    try:
        return RaceSettings(**values).check()
    except TypeError:
        known = ", ".join(RaceSettings.__dataclass_fields__)
        unknown = ", ".join(sorted(set(values) - set(RaceSettings.__dataclass_fields__)))
        raise UserError(f"sweep.race: {unknown} is not a race setting (settings: {known}).") \
            from None
    except ValueError as error:
        raise UserError(f"sweep.race: {error}.") from None


def evaluation_seeds(sweep: DictConfig) -> list[int]:
    """The seeds the race hands out, in order: after the tuning seed, never equal to it."""
    first = sweep.tune.seed + 1 if sweep.tune is not None else 0
    return list(range(first, first + race_settings(sweep).max_seeds))


def check_stages(sweep: DictConfig, training: list[str]) -> None:
    """A staged comparison's own settings, before any training."""
    from mlp_experiments.sweep.spec import SAMPLERS

    if not sweep.variants:
        raise UserError("sweep.tune and sweep.race compare named variants: add a `variants:` "
                        "block (name: [overrides]).")
    race_settings(sweep)
    if set(sweep.space) - {SEED_KEY}:
        raise UserError(f"sweep.space: {', '.join(sorted(set(sweep.space) - {SEED_KEY}))}: a "
                        f"staged comparison searches in tune.space and its variants set the "
                        f"rest.")
    if SEED_KEY in sweep.space:
        raise UserError(f"sweep.space.{SEED_KEY}: the race hands out the seeds (up to "
                        f"race.max_seeds): drop it from space.")
    if sweep.tune is None:
        return
    tune = sweep.tune
    if not tune.space:
        raise UserError("sweep.tune.space is empty: name what each variant tunes, e.g. "
                        "tune.space: {optimizer.lr: 'tag(log, interval(1e-4, 1))'}.")
    if tune.n_trials < 1:
        raise UserError(f"sweep.tune.n_trials={tune.n_trials} must be at least 1 (trials per "
                        f"variant).")
    if tune.sampler not in set(SAMPLERS) - {"grid"}:
        raise UserError(f"sweep.tune.sampler={tune.sampler}: choose tpe, random or qmc.")
    strangers = sorted(set(tune.variant_space) - set(sweep.variants))
    if strangers:
        raise UserError(f"sweep.tune.variant_space: {', '.join(strangers)} is not a variant "
                        f"(variants: {', '.join(sweep.variants)}).")
    for variant, own in tune.variant_space.items():
        shared = sorted(set(own) & set(tune.space))
        if shared:
            raise UserError(f"sweep.tune.variant_space.{variant}: {', '.join(shared)} is in "
                            f"tune.space already (every variant tunes it): drop it from one.")
    for variant in sweep.variants:
        check_tuned_keys(sweep, variant, training)


def check_tuned_keys(sweep: DictConfig, variant: str, training: list[str]) -> None:
    """No key a variant tunes may be set by hand: not by the variant, the sweep's overrides or
    the command line."""
    for key, where in tuned_keys(sweep, variant).items():
        if key == SEED_KEY:
            raise UserError(f"sweep.{where}.{SEED_KEY}: tuning runs on tune.seed alone; the "
                            f"seeds that judge come after it.")
        setters = [variant] * any(sets(o, key) for o in sweep.variants[variant])
        setters += ["the sweep's overrides"] * any(sets(o, key) for o in sweep.overrides)
        setters += ["the command line"] * any(sets(o, key) for o in training)
        if setters:
            raise UserError(f"sweep.{where}.{key} is tuned, but {', '.join(setters)} also "
                            f"set(s) it: a tuned key takes the value tuning finds. Drop one.")


def tuned_keys(sweep: DictConfig, variant: str) -> dict[str, str]:
    """Each key the variant tunes, with the setting that names it."""
    own = sweep.tune.variant_space.get(variant, {})
    return {**{key: "tune.space" for key in sweep.tune.space},
            **{key: f"tune.variant_space.{variant}" for key in own}}


def tuning_space(sweep: DictConfig, variant: str) -> dict[str, str]:
    return {**sweep.tune.space, **sweep.tune.variant_space.get(variant, {})}


def plan_lines(sweep: DictConfig) -> list[str]:
    """What the plan printed before a staged comparison starts says of its stages."""
    settings, seeds, lines = race_settings(sweep), evaluation_seeds(sweep), []
    if sweep.tune is not None:
        tune, variants = sweep.tune, len(sweep.variants)
        lines += [f"  stage 1, tune: {tune.n_trials} trials per variant ({tune.n_trials * variants}"
                  f" in all), sampler {tune.sampler} {dict(tune.sampler_args) or ''}(seed "
                  f"{sweep.seed}), pruner {tune.pruner} "
                  f"{dict(tune.pruner_args) or ''}, training seed {tune.seed}",
                  *(f"    {key}: {expression}" for key, expression in tune.space.items()),
                  *(f"    {key}: {expression} (only {variant})"
                    for variant, own in tune.variant_space.items()
                    for key, expression in own.items())]
    lines.append(f"  stage {2 if sweep.tune is not None else 1}, race: seeds {seeds[0]} to "
                 f"{seeds[-1]}, {settings.min_seeds} to {settings.max_seeds} per variant, "
                 f"one more per round to the variants in contention (alpha {settings.alpha}, "
                 f"margin of practical equivalence {settings.margin})")
    return lines


# ---------------------------------------------------------------------------- the stages' sweeps


def tuning_study_name(sweep: DictConfig, variant: str) -> str:
    return f"{sweep.study_name}.tune.{variant}"


def tuning_sweep(sweep: DictConfig, variant: str) -> DictConfig:
    """The study that tunes one variant: its overrides fixed, tune.space searched."""
    tune = sweep.tune
    return derived(sweep, study_name=tuning_study_name(sweep, variant),
                   overrides=[*sweep.overrides, *sweep.variants[variant],
                              f"{SEED_KEY}={tune.seed}"],
                   space=tuning_space(sweep, variant), variants={}, sampler=tune.sampler,
                   sampler_args=dict(tune.sampler_args),
                   pruner=tune.pruner, pruner_args=dict(tune.pruner_args),
                   n_trials=tune.n_trials)


def evaluation_sweep(sweep: DictConfig, chosen: dict[str, list[str]],
                     n_trials: int | None = None) -> DictConfig:
    """The study that judges: each variant with its chosen values, on the race's seeds (every
    trial is queued by the race: the sampler proposes none, nothing is pruned); its workers
    run the `n_trials` the race has queued so far."""
    seeds = evaluation_seeds(sweep)
    return derived(sweep, variants={name: [*overrides, *chosen.get(name, [])]
                                    for name, overrides in sweep.variants.items()},
                   space={SEED_KEY: f"range({seeds[0]}, {seeds[-1] + 1})"},
                   sampler="random", sampler_args={}, pruner="none", pruner_args={},
                   n_trials=n_trials)


def derived(sweep: DictConfig, **values: Any) -> DictConfig:
    stage = copy.deepcopy(sweep)
    for key, value in values.items():
        stage[key] = value
    stage.tune, stage.race = None, None
    return stage


# ---------------------------------------------------------------------------- running them


@dataclass
class StageRunner:
    """What the sweep command gives the stages: how to run a stage's workers on a sweep until
    its study has n_trials, and how to nest MLflow runs (None without tracking)."""

    run_workers: Callable[[DictConfig, Any], None]  # (sweep, parent run id(s)) -> None
    open_study: Callable[[DictConfig], Any]
    nested_run: Callable[[Any, str, str], str] | None = None  # (study, name, parent) -> run id


def run_stages(sweep: DictConfig, runner: StageRunner, parent_run_id: str | None,
               evaluation_study) -> dict[str, list[str]]:
    """Tune every variant (when the sweep says so), then race them; returns each variant's
    chosen overrides."""
    chosen = {}
    if sweep.tune is not None:
        chosen = tune_variants(sweep, runner, parent_run_id, evaluation_study)
    race(sweep, chosen, runner, parent_run_id, evaluation_study)
    return chosen


def tune_variants(sweep: DictConfig, runner: StageRunner, parent_run_id: str | None,
                  evaluation_study) -> dict[str, list[str]]:
    stage_run = runner.nested_run(evaluation_study, "tune", parent_run_id) \
        if runner.nested_run and parent_run_id else None
    chosen = {}
    for index, variant in enumerate(sweep.variants, start=1):
        stage = tuning_sweep(sweep, variant)
        print(f"tune {index}/{len(sweep.variants)}: {variant}, {stage.n_trials} trials of "
              f"{', '.join(stage.space)} on seed {sweep.tune.seed}", flush=True)
        study = runner.open_study(stage)
        parent = runner.nested_run(evaluation_study, f"tune/{variant}", stage_run) \
            if stage_run else None
        runner.run_workers(stage, parent)
        chosen[variant] = best_values(study, variant)
        print(f"  {variant}: best {stage.metric} {study.best_value:.4f} with "
              f"{describe(study.best_trial.params)}", flush=True)
    return chosen


def best_values(study, variant: str) -> list[str]:
    """The overrides of a tuning study's best trial."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(f"No tuning trial of variant {variant} completed (each diverged, failed "
                        f"or was pruned): widen or move tune.space, or give it more trials.")
    return [f"{key}={value}" for key, value in study.best_trial.params.items()]


def race(sweep: DictConfig, chosen: dict[str, list[str]], runner: StageRunner,
         parent_run_id: str | None, study):
    """Hand out seeds round by round until the race is decided: each round's runs are queued in
    the evaluation study and run by the workers. Resumable: the race is replayed from the runs
    the study has, and a round's runs that exist already are not queued again."""
    from mlp_experiments.sweep.study import counted_trials

    settings, seeds = race_settings(sweep), evaluation_seeds(sweep)
    parents = variant_runs(sweep, runner, parent_run_id, study)
    contending, target, state = list(sweep.variants), settings.min_seeds, None
    while True:
        queued = [(name, seed) for name in contending for seed in seeds[:target]
                  if (name, seed) not in planned_runs(study)]
        if state is not None and not queued:  # the round's runs exist, some crashed
            print("the race stops: every run of its next round exists already (a crashed run "
                  "is not run again; see the failed runs)", flush=True)
            return state
        for name, seed in queued:
            study.enqueue_trial({"variant": name, SEED_KEY: seed})
        runner.run_workers(evaluation_sweep(sweep, chosen, counted_trials(study)), parents)
        state = race_state(sweep, study)
        print(round_line(state, settings), flush=True)
        if state.finished:
            return state
        contending, target = list(state.next_seeds), state.next_look


def race_state(sweep: DictConfig, study):
    """The race replayed on the evaluation study's scores: what the command and the report
    both say."""
    from mlp_experiments.report.racing import decide

    scores = seed_scores(study)
    return decide({name: scores.get(name, {}) for name in sweep.variants}, race_settings(sweep),
                  maximize=higher_is_better(study))


def tuning_studies(sweep: DictConfig) -> dict[str, Any]:
    """Each variant's tuning study, None where it has not been created yet."""
    import optuna

    from mlp_experiments.sweep.study import make_storage

    storage = make_storage(storage_url(sweep))
    names = set(optuna.get_all_study_names(storage))
    return {variant: optuna.load_study(study_name=tuning_study_name(sweep, variant),
                                       storage=storage)
            if tuning_study_name(sweep, variant) in names else None
            for variant in sweep.variants}


def planned_runs(study) -> set[tuple[str, int]]:
    """(variant, seed) of the evaluation runs that are queued, running or ended on their own (a
    run whose worker died is queued again by the study, not counted here)."""
    from mlp_experiments.report.trials import status

    planned = set()
    for trial in study.get_trials(deepcopy=False):
        params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        if status(trial) != "interrupted" and "variant" in params:
            planned.add((params["variant"], params[SEED_KEY]))
    return planned


def seed_scores(study) -> dict[str, dict[int, float]]:
    """Each variant's final test score per seed (NaN for a diverged run): what the race and
    the report judge on."""
    from mlp_experiments.report.trials import final, status, task_of

    task = task_of([t for t in study.get_trials(deepcopy=False) if status(t) == "complete"])
    scores: dict[str, dict[int, float]] = {}
    for trial in study.get_trials(deepcopy=False):
        if status(trial) in ("complete", "diverged") and "reused_from" not in trial.user_attrs:
            score = final(trial, f"test_{task.score}") if status(trial) == "complete" \
                else math.nan
            scores.setdefault(trial.params["variant"], {})[trial.params[SEED_KEY]] = score
    return scores


def higher_is_better(study) -> bool:
    from mlp_experiments.report.trials import finished, task_of
    from mlp_experiments.task import higher_is_better as better

    return better(task_of(finished(study)).score)


def variant_runs(sweep: DictConfig, runner: StageRunner, parent_run_id: str | None,
                 study) -> dict[str, str] | None:
    """The MLflow runs the evaluation runs nest under: study -> evaluate -> variant."""
    if not (runner.nested_run and parent_run_id):
        return None
    stage_run = runner.nested_run(study, "evaluate", parent_run_id)
    return {name: runner.nested_run(study, f"evaluate/{name}", stage_run)
            for name in sweep.variants}


def round_line(state, settings) -> str:
    """`race after 4 seeds: adam leads; sgd beaten; momentum same; rmsprop racing (~9 seeds)`"""
    parts = []
    for name, verdict in state.verdicts.items():
        if verdict.status == "leader":
            parts.insert(0, f"{name} leads")
        elif verdict.status == "racing" and verdict.seeds_needed:
            parts.append(f"{name} racing (~{verdict.seeds_needed} seeds to decide)")
        else:
            parts.append(f"{name} {verdict.status}")
    end = " -> decided" if state.finished and state.look < settings.max_seeds else \
        " -> max_seeds reached" if state.finished else f" -> next round to {state.next_look}"
    return f"race after {state.look} seeds: {'; '.join(parts)}{end}"
