"""Where files come in: the watcher, path rules and the per-file scheduler."""
