"""`mlp-rerun`: `command` (the record checked, the code rebuilt in a git worktree, the run trained
again) and `verdict` (the rerun judged against its original, epoch by epoch)."""
