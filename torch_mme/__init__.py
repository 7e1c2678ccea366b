"""torch-mme: the container side (``serve``) and the tools around it (CLI, demo)."""

__version__ = "0.1.0"
