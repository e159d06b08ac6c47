"""Service settings: one class, read from the environment (table in docs/service.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shiftaudit.probe_sets import ProbeLimits

# Good enough for a laptop, refused in production (see `_no_default_secrets`).
DEVELOPMENT_SECRET = "development-only-secret-change-me"


class TeamLimits(BaseModel):
    """What one team may ask of the deployment (None: the deployment's default)."""

    model_config = ConfigDict(extra="forbid")

    max_forward_passes_per_audit: int | None = Field(None, ge=1)
    max_open_audits_per_team: int | None = Field(None, ge=1)


class Settings(BaseSettings):
    """Every knob of the service; environment variables are prefixed SHIFTAUDIT_."""

    model_config = SettingsConfigDict(env_prefix="SHIFTAUDIT_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(
        Path("shiftaudit-data"),
        description="SQLite database and local artifacts when no URLs are given.",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SHIFTAUDIT_DATABASE_URL", "DATABASE_URL"),
        description="postgresql+psycopg://... in production; unset: SQLite in data_dir.",
    )
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("SHIFTAUDIT_REDIS_URL", "REDIS_URL")
    )
    storage_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; unset: data_dir/artifacts."
    )
    max_model_bytes: int = Field(2 * 1024**3, ge=1, description="Largest model upload.")
    max_probe_set_bytes: int = Field(4 * 1024**3, ge=1, description="Largest probe-set archive.")
    max_probe_set_expanded_bytes: int = Field(
        4 * 1024**3,
        ge=1,
        description="Most a probe-set archive may unpack to (members skipped included); each "
        "member is also held to what its image header allows.",
    )
    max_concurrent_probe_checks: int = Field(
        2,
        ge=1,
        description="Probe-set archives unpacked and checked at once; further uploads wait.",
    )
    max_json_body_bytes: int = Field(
        1024**2,
        ge=1024,
        description="Largest request body that is not a streamed upload (JSON), refused "
        "while it arrives.",
    )
    max_probe_images: int = Field(100_000, ge=1, description="Most images in one probe set.")
    max_image_pixels: int = Field(
        80_000_000, ge=1, description="Most pixels (width x height) in one probe image."
    )
    shard_probes: int = Field(
        5000,
        ge=1,
        description="Audits over more probes are split into shards of at most this "
        "many, which different workers sweep at the same time.",
    )
    shard_forward_passes: int = Field(
        1_000_000,
        ge=1,
        description="Audits are also split so that no shard runs more forward passes than "
        "this (a shard's time bounds how long another team's audit may wait for a worker).",
    )
    max_forward_passes_per_audit: int = Field(
        20_000_000,
        ge=1,
        description="The largest audit a team may create, in forward passes of the model "
        "(sweep and layer profile, as POST /v1/audits/estimate computes them); larger ones "
        "are refused with 422 and the estimate.",
    )
    max_open_audits_per_team: int = Field(
        100,
        ge=1,
        description="Queued and running audits a team may have at once; one more is refused "
        "with 429 until some finish.",
    )
    team_limits: dict[str, TeamLimits] = Field(
        default_factory=dict,
        description="Per-team overrides of the two limits above, by team name, as JSON: "
        '{"vision": {"max_forward_passes_per_audit": 100000000}}.',
    )
    audit_time_limit_s: float = Field(
        6 * 3600, gt=0, description="Wall-time limit of one shard's sweep; longer ones fail."
    )
    audit_memory_limit_mb: int = Field(
        16384,
        ge=1024,
        description="Memory limit of one sweep process (data size and resident "
        "memory on CPU workers, resident memory on GPU workers).",
    )
    warm_sandbox: bool = Field(
        True,
        description="Keep a sandbox fork server per worker, started with the engine "
        "imported, that forks a fresh process per job (never reused: one job each); it "
        "saves each audit a fresh interpreter's start-up (seconds) and costs the memory of "
        "one idle interpreter with torch loaded. False: a fresh interpreter per job.",
    )
    heartbeat_timeout_s: float = Field(
        120,
        gt=0,
        description="A running shard whose heartbeat is older is taken as lost by "
        "the reconciler and queued again.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Runs of a shard whose worker was lost, or whose sweep was killed from "
        "outside, before its audit fails.",
    )
    reconcile_interval_s: float = Field(30, gt=0, description="How often the reconciler runs.")
    resend_after_s: float = Field(
        30,
        gt=0,
        description="A queued shard whose message is missing from the broker for "
        "longer (Redis restarted) is sent again.",
    )
    gpu_types: list[str] = Field(
        default_factory=list,
        description="GPU types this deployment runs workers for (`shiftaudit worker "
        "--gpu-type T`), as a JSON list; an audit that asks for one with `gpu_type` runs only "
        "on those workers.",
    )
    hook_artifact_prefixes: list[str] = Field(
        default_factory=list,
        description="URL prefixes (scheme://host[:port]/path/) that POST /v1/hooks/generic may "
        "fetch models from and MLflow tracking servers may be under, as a JSON list; empty: "
        "both registry hooks are off.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhooks to private, loopback and reserved addresses "
        "(refused by default: server-side request forgery).",
    )
    webhook_deadline_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Longest one webhook delivery may take, all told: name lookup, connect, "
        "send, and the receiver's status line and headers. Past it the delivery is retried.",
    )
    webhook_concurrency: int = Field(
        8, ge=1, le=256, description="Webhook deliveries in flight at once."
    )
    worker_cache_dir: Path | None = Field(
        None, description="Worker's artifact cache; unset: data_dir/worker-cache."
    )
    worker_cache_bytes: int = Field(
        20 * 1024**3, ge=1, description="Largest size of the worker's artifact cache."
    )
    secret_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET),
        description="Pepper for API-key hashes (HMAC-SHA256); required in production.",
    )

    @model_validator(mode="after")
    def _no_default_secrets(self) -> Settings:
        if self.environment == "production":
            secret = self.secret_key.get_secret_value()
            if secret == DEVELOPMENT_SECRET or len(secret) < 32:
                raise ValueError(
                    "SHIFTAUDIT_SECRET_KEY must be set to a random value of at least 32 "
                    "characters in production"
                )
            if self.database_url is None:
                raise ValueError("DATABASE_URL must be set in production")
        return self

    def limits_for(self, team: str) -> TeamLimits:
        """The limits that apply to one team: its override, else the defaults."""
        override = self.team_limits.get(team)
        return TeamLimits(
            max_forward_passes_per_audit=(
                override.max_forward_passes_per_audit
                if override and override.max_forward_passes_per_audit is not None
                else self.max_forward_passes_per_audit
            ),
            max_open_audits_per_team=(
                override.max_open_audits_per_team
                if override and override.max_open_audits_per_team is not None
                else self.max_open_audits_per_team
            ),
        )

    def probe_limits(self) -> ProbeLimits:
        """The engine's limits for opening an uploaded probe set."""
        return ProbeLimits(
            max_archive_bytes=self.max_probe_set_bytes,
            max_extracted_bytes=self.max_probe_set_expanded_bytes,
            max_files=self.max_probe_images,
            max_image_pixels=self.max_image_pixels,
            # One line a probe ("name,label"), names and labels of up to 256 bytes together.
            max_labels_bytes=max(64 * 1024, 256 * self.max_probe_images),
        )

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str((self.data_dir / "artifacts").resolve())

    @property
    def resolved_worker_cache_dir(self) -> Path:
        return (self.worker_cache_dir or self.data_dir / "worker-cache").resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'shiftaudit.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
