"""engines.celery."""
