"""The router's settings: the `router`, `state`, `personas` and `security.auth` sections
of the mesh's configuration (ops/settings.py composes them with the others), and
RouterConfig, what a router process is given."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, PositiveInt, field_validator, model_validator

from tiermesh.config import PriorityName, TaskName, TierName
from tiermesh.ids import is_valid_id
from tiermesh.tls import TlsSettings
from tiermesh.tracing import TracingSettings


class IntentGuide(BaseModel):
    """What one of a persona's intents means, for an intent encoder: the label's meaning in
    a sentence and a few situations that call for it. Encoded once; a situation is labelled
    by its nearest guide."""

    description: str
    examples: list[str] = Field(default_factory=list)


class Persona(BaseModel):
    """Who an NPC is: the system text every tier sees, its intents, its voice."""

    system: str
    intents: list[str] = Field(default_factory=list)
    voice: str = ""
    # Said when no tier can answer in time (tasks with `canned: true`); empty: none.
    fallback_line: str = ""
    # The intent chosen when no tier can answer in time (tasks with `canned: true`); one
    # of `intents`. Empty: the call's first label.
    default_intent: str = ""
    # Per intent, its meaning and example situations (for tiers that label by an intent
    # encoder); an intent without one is described by its label alone.
    intent_guides: dict[str, IntentGuide] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_intent_is_an_intent(self) -> Persona:
        if self.default_intent and self.default_intent not in self.intents:
            raise ValueError(
                f"default_intent {self.default_intent!r} is not one of the intents {self.intents}"
            )
        if unknown := sorted(set(self.intent_guides) - set(self.intents)):
            raise ValueError(f"intent_guides for {unknown}, which are not among the intents {self.intents}")
        return self


class TaskPolicy(BaseModel):
    """How the router serves one task."""

    # Tiers in the order they are tried; only the first is used until fallback lands.
    tiers: list[TierName]
    default_max_tokens: int = Field(gt=0)
    max_tokens_limit: int = Field(gt=0)
    # Budget used when the caller sets no gRPC deadline.
    default_deadline_s: float = Field(gt=0)
    # After tokens were sent and the tier fails: continue on another replica with the
    # text so far as a prefix ("resume"), or end with UNAVAILABLE ("fail").
    on_midstream_failure: Literal["resume", "fail"] = "fail"
    # When no tier can answer in time: the router's own answer (TIER_FALLBACK), sent before
    # the deadline: for an intent the persona's default_intent (else the call's first
    # label), for other tasks the persona's fallback_line.
    canned: bool = False
    # The shortest streamed answer worth starting: a tier that cannot stream this many
    # tokens before the deadline is not tried, and max_tokens is lowered to what fits but
    # never below this (router/policies/planner.py). Intents are one label.
    min_tokens: int = Field(default=1, ge=1)
    # Serve a Generate from Bronze's result cache when the same content was made.
    result_cache: bool = False
    # How much of the conversation (≈ tokens) the prompt carries: Gold-bound tasks a
    # short window, dialogue more.
    history_tokens: int = Field(default=512, ge=0)
    # Once a conversation outgrows history_tokens, its window's start moves forward in
    # steps of this share of it, so the turns between steps begin alike and find their
    # prefix in the engine's cache (router/policies/session.py); 0: a turn at a time.
    history_step: float = Field(default=0.25, ge=0, lt=1)
    # The traffic class of calls that name none (tiermesh.v1.Priority).
    priority: PriorityName = "standard"

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> TaskPolicy:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens exceeds max_tokens_limit")
        if not self.tiers:
            raise ValueError("a task needs at least one tier")
        return self


def _default_tasks() -> dict[TaskName, TaskPolicy]:
    return {
        "intent": TaskPolicy(
            tiers=["silver"],
            default_max_tokens=8,
            max_tokens_limit=16,
            default_deadline_s=2.0,
            history_tokens=64,
        ),
        "bark": TaskPolicy(
            tiers=["silver"],
            default_max_tokens=16,
            max_tokens_limit=32,
            default_deadline_s=5.0,
            history_tokens=128,
            min_tokens=4,
        ),
        "dialogue": TaskPolicy(
            tiers=["silver"],
            default_max_tokens=64,
            max_tokens_limit=512,
            default_deadline_s=30.0,
            history_tokens=768,
            min_tokens=8,
        ),
        "longform": TaskPolicy(
            tiers=["silver"],
            default_max_tokens=256,
            max_tokens_limit=1024,
            default_deadline_s=120.0,
            min_tokens=16,
            priority="sheddable",
        ),
    }


class AffinitySettings(BaseModel):
    """balancer: prefix_affine (router/affinity.py)."""

    # A replica holding more than this × the mean load in flight passes a key on to the
    # next on the ring: 1 is pure balance, larger keeps more conversations in place.
    load_factor: float = Field(default=1.25, ge=1.0)
    # Calls without a session are keyed by this many leading tokens of their prompt
    # (≈ 4 characters each): the persona, and the start of the turn.
    leading_tokens: int = Field(default=64, ge=1)
    virtual_nodes: int = Field(default=128, ge=1, le=4096)
    # Remember each conversation's replica in the state store (router.state: shared
    # through Redis by router replicas), placed by load on its first turn; false: the
    # ring alone places every turn (no state, but few conversations spread unevenly).
    remember: bool = True
    # A new conversation goes to the replica holding the fewest conversations with a turn
    # in the last this many seconds (then the fewest calls in flight): a player between
    # turns holds a prefix but no call, so at a player's pace in-flight counts are mostly
    # zero and cannot place.
    conversation_idle_s: float = Field(default=120.0, gt=0)
    # A remembered conversation moves only when its replica holds more than this × the
    # mean load in flight (or is no longer a candidate). Looser than `load_factor`: each
    # router sees only its own calls, so with a few in flight its view of two replicas'
    # loads is lopsided half the time, and every move is a cold prefix.
    move_factor: float = Field(default=2.0, ge=1.0)
    # Eject a replica whose first tokens are far slower than its peers' (the breaker's
    # latency outliers), as p2c's tiers do. Off: here a replica's first tokens are as slow
    # as the prefixes its conversations have not cached and their turns' bursts, not as
    # the replica is; and an ejection sends every one of its conversations' turns, cold,
    # to the others until its trial answer ends. Failures and health checks still eject.
    eject_latency_outliers: bool = False


class TierSettings(BaseModel):
    """A tier's replicas and how the router treats them."""

    # host:port entries, or dns:///name:port re-resolved every resolve_interval_s
    # (a Kubernetes headless Service).
    endpoints: list[str] = Field(min_length=1)
    resolve_interval_s: float = Field(default=10.0, gt=0)
    # p2c (peak-EWMA × load), round_robin, or prefix_affine: a conversation's turns go
    # to the replica that holds its prefix in its KV cache, within a bound on its load.
    balancer: Literal["p2c", "round_robin", "prefix_affine"] = "p2c"
    affinity: AffinitySettings = Field(default_factory=AffinitySettings)
    # Watch grpc.health.v1 on every replica ("" = the server's overall health).
    health_check: bool = True
    health_service: str = ""
    health_retry_s: float = Field(default=1.0, gt=0)
    # Time to first token, and time per token after it, assumed before any is observed
    # (per task: the planner learns each task's from the tier's answers).
    expected_ttft_s: float = Field(default=0.2, gt=0)
    expected_token_s: float = Field(default=0.05, gt=0)
    # expected_ttft_s for some tasks (e.g. intents labelled by an encoder).
    expected_ttft_by_task: dict[TaskName, float] = Field(default_factory=dict)
    # Streams in flight across the tier's replicas (0: unlimited); more wait in a
    # queue, or are shed at once when the wait would not fit the deadline.
    max_streams: int = Field(default=0, ge=0)
    # Tasks served from capacity of their own (Gold's intent encoder beside its LLM):
    # their streams are limited and queued apart, and do not count against max_streams.
    max_streams_by_task: dict[TaskName, PositiveInt] = Field(default_factory=dict)
    # Attempts per call before the first token (1: no retries).
    max_attempts: int = Field(default=3, ge=1)
    # Start a second attempt on another replica when the first token is later than
    # the tier's observed p95.
    hedge: bool = False
    hedge_min_samples: int = Field(default=20, ge=1)
    # "tier": tiermesh.tier.v1.TierService (Silver, Bronze). "triton": Triton's
    # KServe v2 gRPC with TensorRT-LLM's `ensemble` tensors (Gold).
    protocol: Literal["tier", "triton"] = "tier"
    triton_model: str = "ensemble"
    # protocol triton: the model beside it that labels intents by encoding (text →
    # embedding; router/backends/intent_encoder.py). Empty: intents go to triton_model's
    # guided decoding.
    intent_encoder: str = ""
    # Longest answer this tier produces (0: no limit). Calls asking for more are
    # routed to the next tier of their chain instead.
    max_tokens: int = Field(default=0, ge=0)


def _default_tiers() -> dict[TierName, TierSettings]:
    return {"silver": TierSettings(endpoints=["127.0.0.1:50061"])}


class BreakerSettings(BaseModel):
    failures_to_open: int = Field(default=5, ge=1)
    base_ejection_s: float = Field(default=1.0, gt=0)
    max_ejection_s: float = Field(default=30.0, gt=0)
    # A replica whose first-token latency exceeds factor × its peers' median (and the
    # median + floor) after min_samples is ejected like a failing one.
    outlier_factor: float = Field(default=3.0, gt=1)
    outlier_floor_s: float = Field(default=0.02, ge=0)
    outlier_min_samples: int = Field(default=5, ge=1)
    max_ejected_fraction: float = Field(default=0.5, gt=0, le=1)


class RetryBudgetSettings(BaseModel):
    ratio: float = Field(default=0.2, ge=0)
    min_per_s: float = Field(default=5.0, ge=0)


class IntentCacheSettings(BaseModel):
    enabled: bool = True
    max_entries: int = Field(default=100_000, gt=0)
    ttl_s: float = Field(default=300.0, gt=0)
    # Near-duplicate hits (router/policies/cache.py): the folder with the intent encoder's
    # distilled word-piece table (`make model` writes it beside the encoder; empty: exact
    # hits only); the cosine at or above which a situation takes the label of one already
    # answered (chosen on eval/near_pairs.yaml's dev pairs, bench/results/gold.md); and how
    # many answered situations each persona and label set keeps to compare against, which
    # bounds a lookup's time.
    near_model: str = ""
    near_threshold: float = Field(default=0.99, gt=0, le=1)
    near_per_persona: int = Field(default=1024, gt=0)


class AdmissionSettings(BaseModel):
    """Per-client token buckets keyed by the `x-client-id` metadata (0: off)."""

    rate_per_s: float = Field(default=0.0, ge=0)
    burst: int = Field(default=50, ge=1)


class TenantSettings(BaseModel):
    """One tenant (an authenticated client, or its `x-client-id` where authentication
    is off): its share of a saturated tier and its token quotas (0: none)."""

    # Within a traffic class, backlogged tenants are served tokens in proportion to it.
    weight: float = Field(default=1.0, gt=0)
    input_tokens_per_min: int = Field(default=0, ge=0)
    output_tokens_per_min: int = Field(default=0, ge=0)
    # The share of each tier's stream slots kept for this tenant (rounded down): no other
    # tenant takes them, even while this one does not call. Weights share what is busy;
    # only slots held back can answer a quiet tenant's burst at once beside a flood,
    # since a started stream is never taken back. Its price is capacity left idle.
    reserved_share: float = Field(default=0.0, ge=0, lt=1)


def _default_headroom() -> dict[PriorityName, float]:
    return {"critical": 0.0, "standard": 0.1, "sheddable": 0.25}


class TrafficSettings(BaseModel):
    """Traffic classes and tenants (router/scheduling.py, router/policies/quota.py)."""

    # Off: every call is one class and one tenant to the queues (FIFO), as before
    # classes existed; priorities are still validated.
    classes: bool = True
    # A call waiting this long is served as one class higher (again after twice as
    # long), so sheddable work is never starved for good.
    aging_s: float = Field(default=2.0, gt=0)
    # Tokens a tenant's turn adds to its deficit in the fair queue (× its weight). Small,
    # about one short call: a large quantum lets a backlogged tenant take many slots in a
    # row while another tenant's call waits for its turn.
    quantum_tokens: int = Field(default=32, ge=1)
    # A token quota's bucket holds this many seconds' worth (and at most as much debt):
    # how far a tenant may burst above its rate before it is refused.
    quota_burst_s: float = Field(default=60.0, gt=0)
    # The share of a tier's stream slots a class may not take, so that a higher
    # class arriving finds one free (SGLang's reserved slots).
    headroom: dict[PriorityName, float] = Field(default_factory=_default_headroom)
    # Calls a tier's queue holds per stream slot; past it the lowest class waiting is
    # displaced, or the newcomer refused.
    queue_per_slot: float = Field(default=4.0, gt=0)
    # Named tenants (metrics label them by name; all others are "other").
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    # Tenants not named above.
    default_tenant: TenantSettings = Field(default_factory=TenantSettings)

    @field_validator("headroom")
    @classmethod
    def _headroom_is_a_share(cls, headroom: dict[str, float]) -> dict[str, float]:
        for name, share in headroom.items():
            if not 0 <= share < 1:
                raise ValueError(f"headroom.{name} must be in [0, 1)")
        return headroom

    @model_validator(mode="after")
    def _reservations_fit(self) -> TrafficSettings:
        if self.default_tenant.reserved_share:
            raise ValueError("default_tenant.reserved_share: slots are reserved for named tenants only")
        if sum(t.reserved_share for t in self.tenants.values()) > 1:
            raise ValueError("tenants' reserved_share add up to more than every slot")
        return self

    def tenant(self, client_id: str) -> TenantSettings:
        return self.tenants.get(client_id, self.default_tenant)

    def tenant_label(self, client_id: str) -> str:
        """A bounded metrics label: configured tenants by name, everyone else "other"."""
        return client_id if client_id in self.tenants else "other"


class DataPathSettings(BaseModel):
    """How the router relays streams (bench/proxy.py measures each choice)."""

    # Merge the text deltas already waiting when the caller reads slower than the
    # tier writes (router/coalesce.py). A lone delta is never delayed.
    coalesce: bool = True
    # uvloop wakes on gRPC's completions for less than asyncio's own loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Wake the event loop this often (router/heartbeat.py): a loop that sleeps long wakes
    # late and slow on a virtual machine, and the deadlines' timers with it. An idle
    # router pays for it in CPU (bench/results/loop-heartbeat.md); a busy one's loop is
    # awake anyway. 0 turns it off (and the loop-lag metric with it).
    loop_heartbeat_s: float = Field(default=0.01, ge=0, le=1.0)
    # Router processes sharing the listen port (SO_REUSEPORT: the kernel spreads
    # connections). Worker i serves /metrics on metrics_port + i.
    workers: int = Field(default=1, ge=1, le=64)
    # Run each router process, all its threads, on one CPU: worker i on the i-th CPU it
    # may use. gRPC's threads and the event loop then hand each message over on one core
    # instead of across two (less delay per token: bench/results/proxy.md), at the cost of
    # one process's relay capacity. Only for exclusive cores (a Guaranteed
    # pod under Kubernetes' static CPU manager): routers pinned in a shared pool pile up
    # on one CPU.
    pin_cpus: bool = False
    # The data plane (router/native/, bench/proxy.py measures both). `native`: nghttp2
    # frames the callers' connections in C, and Python is entered once per Generate
    # request and once per response message; other calls are relayed to the grpc.aio
    # server. `grpc`: grpc.aio's server (needs no C compiler at start).
    edge: Literal["grpc", "native"] = "native"
    # The same for calls to TierService replicas (Silver, Bronze): nghttp2 on one
    # connection per replica, or a grpc.aio channel. Health checks stay on grpc.aio;
    # Triton's client is tritonclient either way.
    tier_client: Literal["grpc", "native"] = "native"
    # A caller connection with calls open that was silent this long is sent a PING, and
    # dropped when the timeout passes without an answer (a game client gone without a
    # reset, behind a NAT that forgot it): its calls end and the connection is freed.
    # gRPC's server defaults, on either edge.
    caller_keepalive_s: float = Field(default=7200.0, gt=0)
    caller_keepalive_timeout_s: float = Field(default=20.0, gt=0)
    # Python's objects on glibc's heap, backed by 2 MiB pages (router/heap.py): fewer TLB
    # misses in a request's cold Python (its share of the first token: bench/results/
    # proxy.md). The `tiermesh router` command starts itself again once to set it.
    huge_page_heap: bool = True


class CallerLimits(BaseModel):
    """What one caller may hold of the router: a caller is not trusted, so each of its
    connections is bounded in streams, header bytes, buffered request bytes and time, and
    a stream past a bound gets a precise answer (docs/operations.md lists each, with what
    a caller over it sees). Defaults near Envoy's, nginx's and gRPC's own."""

    # A request's header fields, counted as HTTP/2 counts them (name + value + 32 each):
    # gRPC's hard metadata limit. Past it the stream is answered RESOURCE_EXHAUSTED and
    # nothing more of its headers is kept (an HPACK index of a byte can stand for kilobytes).
    max_header_list_bytes: int = Field(default=16 * 1024, ge=1024, le=1 << 24)
    max_header_fields: int = Field(default=100, ge=8, le=10_000)  # Envoy's default
    # Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS; nginx's
    # 128): gRPC clients queue the rest. Each open stream holds a task, its generators and
    # up to a 64 KiB window of relayed bytes. Not set on the grpc.aio edge, whose limit
    # refuses streams opened as earlier ones end.
    max_streams_per_connection: int = Field(default=128, ge=1, le=(1 << 31) - 1)
    # Connections one router process holds; the next ones are told GOAWAY at once.
    max_connections: int = Field(default=4096, ge=1)
    # Request bytes held at once for one connection's Generate streams (bodies are read
    # whole before a call starts): past it, the stream that would exceed it is answered
    # RESOURCE_EXHAUSTED.
    max_buffered_request_bytes: int = Field(default=8 << 20, ge=1 << 16)
    # A connection that has not sent HTTP/2's preface and SETTINGS within this is dropped.
    preface_timeout_s: float = Field(default=10.0, gt=0)
    # A header block left unfinished this long blocks its connection (HTTP/2 allows no
    # other frame between its parts): the connection is dropped with GOAWAY.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # A Generate request whose body has not ended this long after its headers is answered
    # DEADLINE_EXCEEDED and its bytes let go.
    body_timeout_s: float = Field(default=30.0, gt=0)
    # A connection with no stream open this long is told GOAWAY and closed (gRPC clients
    # reconnect when they next call).
    idle_timeout_s: float = Field(default=3600.0, gt=0)


class RouterSettings(BaseModel):
    listen: str = "127.0.0.1:50051"
    # Intent sets larger than this are refused (each label costs the tier work).
    max_intents: int = Field(default=32, gt=0)
    # Prometheus /metrics; 0 turns it off.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    max_prompt_chars: int = Field(default=16_384, gt=0)
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(default=1 << 20, gt=0)
    # The router's own time to get an answer out before a caller's deadline (at most a
    # fifth of the call's budget): it stops waiting for tiers this much earlier. It covers
    # timers that fire late on a busy host; add the callers' one-way network time when
    # they are far.
    deadline_margin_s: float = Field(default=0.02, ge=0)
    tiers: dict[TierName, TierSettings] = Field(default_factory=_default_tiers)
    tasks: dict[TaskName, TaskPolicy] = Field(default_factory=_default_tasks)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    retry_budget: RetryBudgetSettings = Field(default_factory=RetryBudgetSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    intent_cache: IntentCacheSettings = Field(default_factory=IntentCacheSettings)
    data_path: DataPathSettings = Field(default_factory=DataPathSettings)
    limits: CallerLimits = Field(default_factory=CallerLimits)

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_merge_over_defaults(cls, tasks: Any) -> Any:
        # Configuring one task keeps the defaults of the others.
        if isinstance(tasks, dict):
            return {**_default_tasks(), **tasks}
        return tasks

    @model_validator(mode="after")
    def _routes_name_known_tiers(self) -> RouterSettings:
        for task, policy in self.tasks.items():
            unknown = [tier for tier in policy.tiers if tier not in self.tiers]
            if unknown:
                raise ValueError(f"task {task!r} routes to unconfigured tiers {unknown}")
        return self


class StateSettings(BaseModel):
    """NPC session state: in-process (one router), or Redis (shared by replicas)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Idle sessions are forgotten after this long.
    ttl_s: float = Field(default=24 * 3600, gt=0)
    # Turns kept per session (the prompt takes fewer: see tasks.*.history_tokens).
    max_turns: int = Field(default=200, gt=0)
    # Optimistic-concurrency retries before a turn gives up recording (ABORTED).
    max_retries: int = Field(default=50, ge=1)


PRODUCT_SLOS: dict[TierName, float] = {"gold": 16.0, "silver": 250.0, "bronze": 60_000.0}


class ApiKey(BaseModel):
    """A client's API key, by its SHA-256 (hex): the key itself never sits in config."""

    client_id: str = Field(min_length=1, max_length=128)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # This client's quota (token bucket); unset: router.admission's.
    rate_per_s: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


class JwtSettings(BaseModel):
    """Bearer JWTs: HS256 with a shared secret (set it from a secret, by environment:
    TIERMESH_SECURITY__AUTH__JWT__SECRET), or RS/ES with a public key file."""

    secret: str = ""
    public_key_file: str = ""
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    issuer: str = ""
    audience: str = ""
    # The claim naming the client (its quota key).
    client_claim: str = "sub"


class Quota(BaseModel):
    rate_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class AuthSettings(BaseModel):
    """Who may call the router: `x-api-key: <key>` or `authorization: Bearer <jwt>`."""

    required: bool = False
    api_keys: list[ApiKey] = Field(default_factory=list)
    jwt: JwtSettings | None = None
    # Quotas of clients authenticated by JWT (API keys carry their own).
    quotas: dict[str, Quota] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_way_in(self) -> AuthSettings:
        if self.required and not self.api_keys and self.jwt is None:
            raise ValueError("auth.required needs api_keys or jwt")
        return self


@dataclass(frozen=True)
class RouterConfig:
    """What a router process reads of the mesh's configuration: its own sections, and
    from the others only what it needs (the TLS it serves and dials with, tracing, the
    tiers' prices its cost gauge multiplies)."""

    router: RouterSettings = field(default_factory=RouterSettings)
    personas: Mapping[str, Persona] = field(default_factory=dict)
    state: StateSettings = field(default_factory=StateSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    edge_tls: TlsSettings = field(default_factory=TlsSettings)
    mesh_tls: TlsSettings = field(default_factory=TlsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    hourly_usd: Mapping[TierName, float] = field(default_factory=dict)

    def persona_for(self, npc_id: str) -> Persona | None:
        """The persona configured for an NPC; None when it has none."""
        return self.personas.get(npc_id)


def valid_personas(personas: dict[str, Any]) -> dict[str, Any]:
    """Persona names are npc ids (a call's npc_id selects its persona)."""
    bad = [name for name in personas if not is_valid_id(name)]
    if bad:
        raise ValueError(f"persona names must be valid npc ids: {bad}")
    return personas
