"""Comparing audits: GET /v1/compare."""
