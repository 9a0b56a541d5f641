"""The whole mesh's settings, composed on the top floor from each owner's sections (the
router's in router/settings.py, each service's beside it): one typed object for the
`tiermesh` command and the local mesh, YAML file + TIERMESH_* environment.

Precedence (highest first): constructor arguments, environment variables
(`TIERMESH_ROUTER__LISTEN=...`), the YAML file, the defaults. The YAML file is
`--config`, else `$TIERMESH_CONFIG`, else `config/mesh.yaml` when present. A process that
needs only its own section reads it with tiermesh.config.load_section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from router.settings import AuthSettings, Persona, RouterConfig, RouterSettings, StateSettings, valid_personas
from services.bronze.settings import BronzeSettings
from services.gold.settings import GoldSettings
from services.silver.settings import SilverSettings
from tiermesh.config import TierName, config_path
from tiermesh.tls import TlsSettings
from tiermesh.tracing import TracingSettings

PRODUCT_SLOS: dict[TierName, float] = {"gold": 16.0, "silver": 250.0, "bronze": 60_000.0}


class ValidateSettings(BaseModel):
    """`tiermesh validate`: each tier's latency SLO (p95 time to first token, ms)."""

    slo_p95_ms: dict[TierName, float] = Field(default_factory=lambda: dict(PRODUCT_SLOS))
    probes: int = Field(default=20, ge=1)


class MeshSettings(BaseModel):
    """The local mesh that `tiermesh up` supervises."""

    # Pid file and logs of the components started by `tiermesh up`.
    run_dir: Path = Path(".run")
    # Waiting for every component to report SERVING (Silver loads a model).
    start_timeout_s: float = Field(default=300.0, gt=0)
    # A real Prometheus scraping every component, with the alert rules loaded
    # (0: not started; started only where the `prometheus` binary is installed).
    prometheus_port: int = Field(default=0, ge=0, le=65535)
    scrape_interval_s: float = Field(default=5.0, gt=0)


class SecuritySettings(BaseModel):
    # Game clients → router.
    edge_tls: TlsSettings = Field(default_factory=TlsSettings)
    # Router ↔ tiers (mutual): tiers serve with it, the router dials with it.
    mesh_tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)


class TierPrice(BaseModel):
    """What a tier costs. Gold/Silver: a node per replica, billed by the hour (e.g. an
    EKS node on an EC2 GPU instance). Bronze: SageMaker instance-hours while jobs run,
    or a flat price per job when set."""

    instance_type: str = ""
    hourly_usd: float = Field(default=0.0, ge=0)
    per_job_usd: float = Field(default=0.0, ge=0)


def _default_prices() -> dict[TierName, TierPrice]:
    # On-demand us-east-1 list prices; override in config for your contract.
    return {
        "gold": TierPrice(instance_type="g5.xlarge", hourly_usd=1.006),
        "silver": TierPrice(instance_type="g5.2xlarge", hourly_usd=1.212),
        "bronze": TierPrice(instance_type="ml.g5.xlarge", hourly_usd=1.408),
    }


class CostSettings(BaseModel):
    prices: dict[TierName, TierPrice] = Field(default_factory=_default_prices)
    # Where `tiermesh cost` reads usage from (overridable per call).
    prometheus_url: str = "http://127.0.0.1:9090"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIERMESH_", env_nested_delimiter="__", extra="forbid")
    # Set by `load_settings`; read by the YAML source below.
    _yaml_file: ClassVar[Path | None] = None

    router: RouterSettings = Field(default_factory=RouterSettings)
    silver: SilverSettings = Field(default_factory=SilverSettings)
    gold: GoldSettings = Field(default_factory=GoldSettings)
    bronze: BronzeSettings = Field(default_factory=BronzeSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    validation: ValidateSettings = Field(default_factory=ValidateSettings)
    mesh: MeshSettings = Field(default_factory=MeshSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    personas: dict[str, Persona] = Field(default_factory=dict)

    @field_validator("personas")
    @classmethod
    def _persona_ids_are_npc_ids(cls, personas: dict[str, Persona]) -> dict[str, Persona]:
        return valid_personas(personas)

    @model_validator(mode="after")
    def _workers_share_state(self) -> Settings:
        # Each worker is its own process: in-memory sessions would split between them.
        if self.router.data_path.workers > 1:
            if self.state.backend != "redis":
                raise ValueError("router.data_path.workers > 1 needs state.backend: redis")
            if self.router.listen.endswith(":0"):
                raise ValueError("router.data_path.workers > 1 needs a fixed listen port")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._yaml_file))
        return tuple(sources)

    def persona_for(self, npc_id: str) -> Persona | None:
        """The persona configured for an NPC; None when it has none."""
        return self.personas.get(npc_id)

    def router_config(self) -> RouterConfig:
        """What a router process is given: its own sections only."""
        security = self.security
        return RouterConfig(
            router=self.router,
            personas=self.personas,
            state=self.state,
            auth=security.auth,
            edge_tls=security.edge_tls,
            mesh_tls=security.mesh_tls,
            tracing=self.tracing,
            hourly_usd={tier: price.hourly_usd for tier, price in self.cost.prices.items()},
        )


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the YAML file (see `config_path`), the environment and overrides."""
    yaml_file = config_path(path)
    if yaml_file is not None and not yaml_file.exists():
        raise FileNotFoundError(f"config file not found: {yaml_file}")
    Settings._yaml_file = yaml_file
    try:
        return Settings(**overrides)
    finally:
        Settings._yaml_file = None
