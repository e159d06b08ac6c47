"""Every mapped table, imported in one place so that `Base.metadata` is complete."""

from service import idempotency
from service.audits import models as audits
from service.classifiers import models as classifiers
from service.db import Base
from service.hooks import models as hooks
from service.policies import models as policies
from service.probe_sets import models as probe_sets
from service.teams import models as teams
from service.webhooks import models as webhooks

__all__ = [
    "Base",
    "audits",
    "classifiers",
    "hooks",
    "idempotency",
    "policies",
    "probe_sets",
    "teams",
    "webhooks",
]
