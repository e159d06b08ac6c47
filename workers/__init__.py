"""Celery workers that run audit shards, and the reconciler that keeps the queue honest."""
