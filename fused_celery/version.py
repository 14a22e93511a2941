"""The package version, in one place (``fused_celery.__version__``; the table writer records it)."""

__version__ = "0.1.0"
