"""Tools used by apps and users: run environment and logging, checkpoints, reports."""
