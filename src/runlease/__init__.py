"""runlease: run-bound, short-lived, audited credentials for ML pipelines."""

__version__ = "0.1.0"
