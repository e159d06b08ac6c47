"""Audits: queued shift sweeps of one model on one probe set, and their reports."""
