"""Reports of a sweep's study: `trials` (what the report reads of each trial), `stats`,
`figures`, `markdown` (the report itself) and `command` (`python -m mlp_experiments.report`, and
the summary the sweep command logs to the study's MLflow parent run)."""
