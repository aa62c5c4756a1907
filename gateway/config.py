"""Settings: one object, built once at start-up and passed in (``create_app(settings)``).

Sources, highest priority first: command-line flags, ``SHADOWTUNE_*`` environment
variables (``__`` separates nested names: ``SHADOWTUNE_SERVER__PORT=9000``), the config
file (YAML or TOML, ``--config`` or ``SHADOWTUNE_CONFIG``), the defaults below. Every
field's docstring is its documentation: ``shadowtune config show`` and the README's
settings reference are generated from them.

Live route splits are state, not config: the ``routes`` section gives each route's
starting state; the admin API changes it at run time (``gateway.routing.state``).
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

OPENAI_COMPATIBLE = {
    "openai",
    "azure",
    "vllm",
    "ollama",
    "openai_compatible",
    "together",
    "groq",
    "fireworks",
}


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def check_base_url(url: str) -> None:
    """An upstream's base URL must be ``http(s)://host...``; raises ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base_url {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"base_url {url!r} has no host")


def check_key_env(name: str | None) -> str | None:
    """The environment variable of a provider key, checked once: whitespace around the key (the
    trailing newline of ``$(cat key.txt)``) is stripped from the variable in place; a control,
    space or non-ASCII character inside the key is refused (it would break every request)."""
    if name is None:
        return None
    if not name or "=" in name or "\0" in name:
        raise ValueError(f"{name!r} is not an environment variable name")
    value = os.environ.get(name)
    if value is None:
        return name
    key = value.strip()
    bad = next((c for c in key if not " " < c < "\x7f"), None)
    if bad is not None:
        raise ValueError(
            f"the key in the environment variable {name} has the character {bad!r} inside "
            "(a key is printable ASCII without spaces): fix the variable"
        )
    if key != value:
        os.environ[name] = key
    return name


def litellm_installed() -> bool:
    return importlib.util.find_spec("litellm") is not None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class UpstreamConfig(_Section):
    """One model Shadowtune can call."""

    base_url: str | None = None
    """Base URL of an OpenAI-compatible API (``https://api.openai.com/v1``, a vLLM server's ``/v1``).
    Set for OpenAI-compatible providers, which take the fast direct path."""
    provider: str = "openai"
    """``openai``, ``azure``, ``vllm``, ``ollama``, ``openai_compatible`` (fast path), or any litellm
    provider (``anthropic``, ``bedrock``, ``vertex_ai``, ``gemini``, ``mistral``, ...), called through litellm."""
    model: str | None = None
    """Model id sent upstream; defaults to the upstream's name."""
    api_key_env: str | None = None
    """Name of the environment variable holding the provider key (the key itself never goes in config).
    Whitespace around the key is stripped at start; a key with a control character inside is refused."""
    timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds to wait for the upstream's next byte before answering 504."""
    retries: Annotated[int, Field(ge=0)] = 2
    """Retries of 429/5xx answers and connection failures, before the first byte only."""
    price_in: float | None = None
    """USD per million input tokens, for the log's cost estimate."""
    price_out: float | None = None
    """USD per million output tokens, for the log's cost estimate."""
    family: str | None = None
    """Model family (``gpt``, ``claude``, ``llama``...), used by the judge's self-preference guard."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent upstream (e.g. ``api-version`` for Azure)."""
    ca_file: str | None = None
    """PEM bundle of the CA(s) that signed this upstream's certificate (a private CA), instead of the
    system's (OpenAI-compatible upstreams; litellm ones take ``SSL_CERT_FILE``). Proxies come from
    ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``."""
    cert_file: str | None = None
    """PEM client certificate sent to this upstream (mTLS); the key in it or in ``key_file``."""
    key_file: str | None = None
    """PEM private key of ``cert_file`` (mTLS)."""

    @model_validator(mode="after")
    def _tls_files_exist(self) -> UpstreamConfig:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name} {path!r} is not a readable file")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if (self.ca_file or self.cert_file) and self.provider not in OPENAI_COMPATIBLE:
            raise ValueError(
                f"ca_file and cert_file apply to OpenAI-compatible upstreams (the direct path); provider "
                f"{self.provider!r} goes through litellm, which takes a private CA from SSL_CERT_FILE only"
            )
        return self

    @property
    def fast_path(self) -> bool:
        return self.base_url is not None and self.provider in OPENAI_COMPATIBLE

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None:
            check_base_url(v)
        return v

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, v: str | None) -> str | None:
        return check_key_env(v)

    @model_validator(mode="after")
    def _provider_installed(self) -> UpstreamConfig:
        if self.provider not in OPENAI_COMPATIBLE and not litellm_installed():
            raise ValueError(
                f"provider {self.provider!r} is called through litellm, which is not installed: "
                "pip install 'shadowtune[providers]'"
            )
        return self


class TransformConfig(_Section):
    """What the candidate is sent instead of the application's request (`gateway.protocol.transform`)."""

    system: Literal["keep", "drop", "replace"] = "keep"
    """The system (and developer) messages: ``keep``, ``drop``, or ``replace`` with ``system_prompt``."""
    system_prompt: str | None = None
    """The candidate's own system prompt (with ``system: replace``)."""
    few_shot_turns: int = 0
    """Drop the first N user/assistant pairs after the system messages (the prompt's fixed examples)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters to set on the candidate's request (``temperature``, ``max_tokens``, ...)."""
    drop_params: list[str] = Field(default_factory=list)
    """Parameters to remove from the candidate's request."""

    @model_validator(mode="after")
    def _valid(self) -> TransformConfig:
        from gateway.protocol.transform import parse

        parse(self.model_dump())
        return self

    def spec(self) -> dict[str, Any] | None:
        """The canonical spec the route state keeps (None: no change)."""
        from gateway.protocol.transform import parse

        t = parse(self.model_dump())
        return t.spec if t is not None else None


class RouteConfig(_Section):
    """A model name clients send, and the starting state of its traffic split."""

    baseline: str
    """Upstream that serves the route: the prompted production model."""
    candidate: str | None = None
    """Upstream of the fine-tuned candidate (optional)."""
    mode: Literal["off", "shadow", "canary", "primary"] = "off"
    """``off``: baseline only; ``shadow``: candidate answers in the background; ``canary``: a sticky share
    of users is served by the candidate; ``primary``: the candidate serves everyone."""
    share: float = 0.0
    """Canary share in percent (0-100, 0.01 steps)."""
    shadow_rate: float = 1.0
    """Fraction (0-1) of requests mirrored to the other variant in shadow (and reverse-shadow in primary)."""
    sticky_key: str = "user"
    """What keeps a user in one arm: ``user`` (the request's ``user`` field), ``session``
    (``x-shadowtune-session``), ``client_key``, or ``header:<name>``."""
    salt: str = ""
    """Salt of the canary hash; change it to reshuffle users."""
    store_bodies: bool = True
    """False keeps request and response bodies out of the log for this route."""
    candidate_transform: TransformConfig | None = None
    """The candidate's own prompt: drop or replace the system prompt, drop few-shot turns, set
    parameters; applied in shadow, canary and primary, and when a dataset is built for the route."""

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_boolean(cls, v: Any) -> Any:
        if isinstance(v, bool):
            word = "off" if v is False else "on"
            raise ValueError(
                f"mode is the boolean {str(v).lower()} (YAML reads an unquoted {word} as a boolean): "
                'write mode: "off", "shadow", "canary" or "primary"'
            )
        return v

    @model_validator(mode="after")
    def _candidate_for_mode(self) -> RouteConfig:
        if self.mode != "off" and self.candidate is None:
            raise ValueError(f"mode {self.mode!r} needs a candidate (set candidate: <upstream>)")
        if not 0 <= self.share <= 100:
            raise ValueError("share is a percentage: between 0 and 100")
        if not 0 <= self.shadow_rate <= 1:
            raise ValueError("shadow_rate is a fraction: between 0 and 1")
        return self


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    workers: int = 1
    """Request worker processes (each with its own WAL segments); ``serve`` adds one log agent process per host."""
    auth: Literal["auto", "keys", "open"] = "auto"
    """``keys``: callers need a key from ``shadowtune keys create``; ``open``: no client auth (local use);
    ``auto``: ``keys`` once a key exists, else ``open``."""
    admin_token: SecretStr | None = None
    """Bearer token of the admin API (``/admin/...``). Without it the admin API answers only on loopback."""
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 2**20
    """Largest request body accepted: 413 above, refused up front from ``Content-Length``."""
    max_header_bytes: Annotated[int, Field(gt=0)] = 64 * 2**10
    """Largest request line and headers accepted (431 above)."""
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a client may take to send a request's line and headers (slowloris): 408 and close after."""
    body_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """Seconds a client may take to send a request's whole body once its headers are in: 408 and close
    after."""
    keep_alive_timeout_s: Annotated[float, Field(gt=0)] = 75.0
    """Seconds an idle keep-alive connection stays open between requests."""
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK_NAMES))
    """``Host`` names (without port) accepted where the gateway trusts the network instead of a key,
    against DNS rebinding: the admin API and review pages without ``admin_token``, the loopback-only
    endpoints, and the whole API in open mode on a loopback address. ``*.example.com`` matches
    subdomains; ``*`` any host."""
    public_endpoints: list[Literal["metrics", "docs", "readyz"]] = Field(default_factory=list)
    """Operational endpoints served to every caller: ``metrics`` (``/metrics``), ``docs`` (``/docs``,
    ``/redoc``, ``/openapi.json``), ``readyz`` (the readiness detail, with file paths). Otherwise they
    answer loopback clients and the admin token only; ``/healthz`` and ``/readyz``'s status code and
    ``status`` stay open to all (Kubernetes probes)."""
    agent_nice: Annotated[int, Field(ge=0, le=19)] = 10
    """Niceness the log agent process adds to itself (0 to 19): the request workers get the CPU first, so
    the agent's conversion and compaction bursts do not stretch the request path's tail (p99); the
    agent catches up on the WAL in the gaps. 0 runs it at the workers' priority."""
    gil_switch_interval_ms: float = 2.0
    """Python's thread switch interval while serving (default 5 ms): lower shortens the request path's wait
    when the log writer's thread is busy (p99), at some CPU cost for streamed calls."""
    upstream_key_env: str | None = None
    """Zero-config: environment variable holding the key for ``--upstream``; without it, in open mode,
    the caller's own bearer key is forwarded."""
    passthrough_url: str | None = None
    """Zero-config: forward every model name unchanged to this OpenAI-compatible URL."""

    @field_validator("passthrough_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None:
            check_base_url(v)
        return v

    @field_validator("upstream_key_env")
    @classmethod
    def _key_env(cls, v: str | None) -> str | None:
        return check_key_env(v)


class RedactConfig(_Section):
    emails: bool = False
    """Replace e-mail addresses with ``[EMAIL]`` before rows are written."""
    cards: bool = False
    """Replace payment-card numbers with ``[CARD]`` before rows are written."""
    patterns: list[str] = Field(default_factory=list)
    """Extra regular expressions replaced with ``[REDACTED]``."""


class StoreConfig(_Section):
    """Where and how the call log is written."""

    log_dir: str = "./shadowtune-data"
    """Directory (or ``s3://bucket/prefix`` URI) of the call log."""
    wal_dir: str | None = None
    """Local directory for the write-ahead log (default ``<log_dir>/wal``; required for object stores)."""
    state_dir: str | None = None
    """Directory of the live route state and client keys (default: the log directory; required, and shared
    by all replicas, when the log is in object storage)."""
    state_url: str | None = None
    """Where the control-plane state lives (route state and history, client keys, controller and trigger
    state, job leases): a directory (default: `state_dir`; right for one host) or ``postgresql://user@host/db``
    for several hosts (``pip install 'shadowtune[postgres]'``; password from ``PGPASSWORD`` or the URL)."""
    response_ids_days: Annotated[float, Field(gt=0)] = 30.0
    """Days the state backend remembers which upstream created each Responses API id (for
    ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``, from any worker or replica)."""
    flush_interval: float = 1.0
    """Seconds between Parquet flushes."""
    max_pending: int = 100_000
    """Records held in memory while the WAL cannot be written; beyond it they are dropped and counted."""
    max_backlog_mb: int = 256
    """Unflushed bytes above which ``/readyz`` reports the store degraded."""
    tail_read_max_mb: Annotated[int, Field(gt=0)] = 64
    """Most bytes (MiB) of not yet converted WAL the log agent's own readers (regeneration detection, the
    review pages) parse per snapshot, newest first: when the agent falls behind, the older backlog is seen
    once converted (oldest first) instead of being parsed into memory on every read."""
    tail_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between the log agent's reads of the WAL as it grows (what metrics and spans are made
    from; at most ``flush_interval``). Shorter gives fresher metrics at a cost to the request workers'
    tail latency on a small host: at one connection on 2 cores, p99 0.82-2.1 ms at 0.2 s against
    0.50-0.71 ms at 1 s in six runs of seven (docs/benchmarks.md): the same CPU in more, shorter bursts."""
    query_memory_mb: Annotated[int, Field(ge=0)] = 512
    """Most memory (MiB) DuckDB may hold for one log agent's queries of the log (the review pages'
    dashboards, the controller, the scheduled jobs); past it a query spills to ``query_temp_dir``, and
    one that cannot spill fails with an error instead of growing the agent until the host or the pod's
    limit kills it (a cold 7-day dashboard over 10M calls held 3.7 GB unbounded). 0: DuckDB's default,
    80 % of the machine's memory. CLI commands (``logs sql``, ``eval``, ``train``) are not bounded."""
    query_threads: Annotated[int, Field(ge=0)] = 0
    """Threads DuckDB uses for one of the agent's queries (0: one per core). 1 keeps a background
    dashboard from taking the request workers' cores, at about 1.3x its time."""
    query_temp_dir: str | None = None
    """Where those queries spill (default ``<system temp dir>/shadowtune-duckdb``; local disk)."""
    convert_process: bool = False
    """Convert closed WAL segments to Parquet in a child process of the log agent, on another core, while
    the agent's tail keeps reading the WAL for telemetry: for hosts with a core to spare, at a third to a
    half more CPU per row (each record is parsed twice) and the child's memory (~170 MiB); off, the agent
    converts in its own thread (docs/benchmarks.md)."""
    wal_fsync_ms: float = 0.0
    """Group-commit ``fdatasync`` of the WAL every this many milliseconds (0: off). Off, a killed gateway
    loses nothing but a machine crash (power, kernel) can lose the calls of the last seconds; on, it
    loses at most this window, for one sync per window in a background thread (answers never wait)."""
    retention_days: int | None = None
    """Delete partitions older than this many days (none: keep everything)."""
    compact_interval: float = 600.0
    """Seconds between compactions of small Parquet files (0: never)."""
    create_bucket: bool = False
    """Create the ``s3://`` bucket of ``log_dir`` at start when it is missing (otherwise a missing bucket
    stops the start with an error). Endpoint and credentials come from the usual ``AWS_*`` variables."""
    redact: RedactConfig = Field(default_factory=RedactConfig)
    """Redaction applied before rows are written."""

    @property
    def state_path(self) -> str:
        if self.state_dir:
            return self.state_dir
        if "://" in self.log_dir and not self.log_dir.startswith("file://"):
            return os.path.abspath("shadowtune-state")
        return self.log_dir.removeprefix("file://")


class ShadowConfig(_Section):
    max_in_flight: int = 64
    """Shadow calls running at once (per worker); more are queued."""
    queue_size: int = 256
    """Shadow calls waiting (per worker); beyond it they are skipped and counted."""


class TelemetryConfig(_Section):
    otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint (``http://collector:4318``); none: no export."""
    service_name: str = "shadowtune-gateway"
    """``service.name`` resource attribute."""
    capture_content: bool = False
    """Put prompt and completion text in spans (off: text stays out of telemetry)."""
    prometheus: bool = True
    """Serve Prometheus metrics at ``/metrics``."""


class SignalsConfig(_Section):
    custom_metrics: list[dict[str, Any]] = Field(default_factory=list)
    """Named feedback metrics: ``{name, type: bool|float, higher_is_better, min, max}``."""
    rating_min: float = 1.0
    """Lowest accepted rating."""
    rating_max: float = 5.0
    """Highest accepted rating."""
    regeneration_window_s: float = 600
    """A conversation sent again within this many seconds marks the earlier call regenerated."""
    detect_rephrase: bool = False
    """Also count an immediate rephrasing of the last user turn as a regeneration."""
    detect_interval_s: float = 30
    """Seconds between regeneration detection runs over the log (0: off; one worker/replica runs it)."""
    feedback_rate_per_min: float = Field(default=120.0, ge=0)
    """Feedback posts a minute allowed per client key (per client address in open mode), per worker (0: no limit); 429 above."""
    feedback_burst: int = Field(default=60, ge=1)
    """Feedback posts a key may send at once before `feedback_rate_per_min` applies."""


class DriftCheckConfig(_Section):
    """A drift check the gateway runs on a schedule (``shadowtune drift check``; needs the ``evals`` extra)."""

    route: str
    """Route whose live traffic is checked."""
    reference: str = "window"
    """``window`` (the period before ``current``), ``window:7d``, or ``dataset:NAME`` (what the model learned from)."""
    current: str = "24h"
    """The live window compared with the reference."""
    every_s: float = 3600
    """Seconds between runs."""
    timeout_s: float = 600
    """A run taking longer is stopped."""
    rounds: int = Field(default=99, ge=19)
    """Calibration rounds of the domain classifier (``drift check --rounds``): fewer run faster, with a coarser threshold."""


class DriftConfig(_Section):
    checks: list[DriftCheckConfig] = Field(default_factory=list)
    """Scheduled drift checks; scores are exported as OpenTelemetry metrics and span events."""


class ControllerRouteConfig(_Section):
    """A canary controller the gateway runs for a route (``shadowtune controller run --once``; ``evals`` extra)."""

    route: str
    """Route whose canary is promoted or rolled back."""
    policy: str | None = None
    """Policy file (guardrails, margins, alpha, ramp steps); defaults apply without one."""
    every_s: float = 300
    """Seconds between checks."""
    timeout_s: float = 120
    """A check taking longer is stopped."""


class ControllerConfig(_Section):
    routes: list[ControllerRouteConfig] = Field(default_factory=list)
    """Routes whose canary the gateway controls itself (one leader among workers and replicas)."""


class TriggerRouteConfig(_Section):
    """Retraining triggers the gateway evaluates for a route on a schedule (``shadowtune triggers run``; ``evals`` and ``train`` extras)."""

    route: str
    """Route whose trigger policy is evaluated (its pipeline runs as a subprocess, one at a time cluster-wide)."""
    policy: str | None = None
    """Policies file; ``<log_dir>/triggers/policies.yaml`` by default."""
    every_s: float = 300
    """Seconds between evaluations."""
    timeout_s: float = 7200
    """A pipeline running longer is killed and its run marked cancelled."""


class TriggersConfig(_Section):
    routes: list[TriggerRouteConfig] = Field(default_factory=list)
    """Routes whose retraining triggers the gateway runs itself (one leader among workers and replicas)."""


class _FileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


class Settings(BaseSettings):
    """All of Shadowtune's settings."""

    model_config = SettingsConfigDict(
        env_prefix="SHADOWTUNE_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True
    )
    _file_data: ClassVar[dict[str, Any]] = {}

    server: ServerConfig = Field(default_factory=ServerConfig)
    """HTTP server and client authentication."""
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    """Named upstream models."""
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    """Model names clients send, each with its baseline (and candidate)."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """The call log."""
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    """Bounds of background shadow work."""
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    """OpenTelemetry and Prometheus."""
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    """Outcome signals (feedback, regenerations)."""
    drift: DriftConfig = Field(default_factory=DriftConfig)
    """Scheduled drift checks."""
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    """Canary controllers run by the gateway."""
    triggers: TriggersConfig = Field(default_factory=TriggersConfig)
    """Scheduled retraining triggers."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls, cls._file_data)

    @field_validator("upstreams")
    @classmethod
    def _names(cls, v: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name, up in v.items():
            if not up.fast_path and up.provider in OPENAI_COMPATIBLE:
                raise ValueError(f"upstream {name!r}: provider {up.provider!r} needs a base_url")
        return v

    @model_validator(mode="after")
    def _routes_name_known_upstreams(self) -> Settings:
        for name, route in self.routes.items():
            for role in ("baseline", "candidate"):
                ref = getattr(route, role)
                if ref is not None and ref not in self.upstreams:
                    raise ValueError(f"route {name!r}: {role} {ref!r} is not a configured upstream")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Build settings from a file (YAML or TOML), the environment and ``overrides`` (CLI flags)."""
        path = path or os.environ.get("SHADOWTUNE_CONFIG")
        data = read_config_file(path) if path else {}
        cls._file_data = data
        try:
            return cls(**_nest(overrides))
        finally:
            cls._file_data = {}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text()
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"{p}{where}: not valid YAML: {' '.join(str(problem).split())}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{p}: not valid TOML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the config file must be a mapping")
    return data


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"server__port": 1}`` -> ``{"server": {"port": 1}}``; None values are left out."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        node = out
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def reference_markdown() -> str:
    """The settings reference (README), generated from the docstrings above."""
    lines = ["| setting | env | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            key = f"{prefix}{name}"
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            sections: dict[str, type[BaseModel]] = {"upstreams": UpstreamConfig, "routes": RouteConfig}
            item = sections.get(key)
            if item is not None:
                walk(item, f"{key}.<name>.")
                continue
            default = (
                "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            )
            doc = " ".join((field.description or "").split()).replace("``", "`")
            env = "SHADOWTUNE_" + key.replace(".", "__").replace("<NAME>", "<name>").upper()
            lines.append(f"| `{key}` | `{env}` | `{default}` | {doc} |")

    walk(Settings, "")
    return "\n".join(lines)
