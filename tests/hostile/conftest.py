"""Fixtures of the hostile suite: the service's real databases and keys (tests/service)."""

from tests.service.conftest import app_and_keys, database_url, postgres_url

__all__ = ["app_and_keys", "database_url", "postgres_url"]
