"""Every mapped table, imported in one place so that `Base.metadata` is complete."""

from service import idempotency
from service.audits import tables as audits
from service.db import Base
from service.models import tables as models
from service.outbound_webhooks import tables as outbound_webhooks
from service.policies import tables as policies
from service.probe_sets import tables as probe_sets
from service.registry_hooks import tables as registry_hooks
from service.teams import tables as teams

__all__ = [
    "Base",
    "audits",
    "idempotency",
    "models",
    "outbound_webhooks",
    "policies",
    "probe_sets",
    "registry_hooks",
    "teams",
]
