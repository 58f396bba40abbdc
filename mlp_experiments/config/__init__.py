"""The training config: `schemas` (the typed dataclasses Hydra checks while composing),
`compose` (composing `conf/` as the commands do), `policy` (which classes a `_target_` may
name), `checks` (values and combinations that cannot train) and `identity` (a run's config
hash and MLflow params)."""
