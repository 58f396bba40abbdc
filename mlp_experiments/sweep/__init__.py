"""Optuna sweeps over the training config: `spec` (the sweep file and its search space), `study`
(storage, heartbeats, the trial budget), `worker` (trials and worker processes), `presets` (a
search's best configuration) and `command` (the `python -m mlp_experiments.sweep` entry point,
the one module that also calls the report)."""
