"""Outbound webhooks: the team's subscriptions to audit events, a delivery outbox and its
dispatcher. (Inbound calls from model registries are `service.registry_hooks`.)"""
