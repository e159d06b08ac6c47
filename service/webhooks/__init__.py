"""Outgoing webhooks: subscriptions, a delivery outbox and its dispatcher."""
