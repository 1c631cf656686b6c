"""One typed settings object, filled from `MT_*` environment variables or CLI options.

Each field's metadata carries its help text; the CLI builds its options from these fields
and `Settings.from_env` reads the same names, so the two never drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .constants import DEFAULT_PREFIX, TIERS
from .errors import ConfigError

ENV_PREFIX = "MT_"
"""Environment variables that fill settings start with this: `MT_REDIS_URL`, `MT_BATCH_SIZE`."""

Algorithm = Literal["FLAT", "HNSW"]
Datatype = Literal["float32", "float16"]


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TierSettings:
    """What one tier needs: its vector size, index type and consolidation policy."""

    name: str
    dim: int
    algorithm: Algorithm
    datatype: Datatype
    max_age_s: float | None
    max_per_agent: int | None


@dataclass(frozen=True)
class Settings:
    """Everything a daemon, client or command needs to know, with production defaults."""

    redis_url: str | None = _setting(
        None, "Redis URL, redis:// or rediss://, user and password in it; unset: embedded Redis"
    )
    prefix: str = _setting(DEFAULT_PREFIX, "namespace of every key, stream and index")
    model_path: str = _setting("models/state_autoencoder.pt", "trained autoencoder checkpoint")
    batch_size: int = _setting(256, "stream entries read, encoded and written together")
    block_ms: int = _setting(1000, "how long one XREADGROUP waits for new entries")
    claim_idle_ms: int = _setting(
        60_000, "entries pending this long are claimed from dead consumers"
    )
    consumer_max_idle_s: float = _setting(
        3600.0,
        "consumers of the group idle this long with nothing pending are removed (XGROUP "
        "DELCONSUMER); a daemon that comes back is added again",
    )
    stm_dim: int = _setting(384, "STM vector size")
    im_dim: int = _setting(128, "IM vector size")
    ltm_dim: int = _setting(32, "LTM vector size")
    stm_algorithm: Algorithm = _setting("FLAT", "STM index type: FLAT or HNSW")
    im_algorithm: Algorithm = _setting("FLAT", "IM index type: FLAT or HNSW")
    ltm_algorithm: Algorithm = _setting("FLAT", "LTM index type: FLAT or HNSW")
    stm_datatype: Datatype = _setting("float32", "STM vector type: float32 or float16")
    im_datatype: Datatype = _setting("float32", "IM vector type: float32 or float16")
    ltm_datatype: Datatype = _setting("float32", "LTM vector type: float32 or float16")
    stm_max_age_s: float | None = _setting(3600.0, "STM memories older than this move to IM")
    stm_max_per_agent: int | None = _setting(
        1000, "over this many STM memories per agent, the oldest move"
    )
    im_max_age_s: float | None = _setting(86_400.0, "IM memories older than this move to LTM")
    im_max_per_agent: int | None = _setting(
        10_000, "over this many IM memories per agent, the oldest move"
    )
    ltm_max_age_s: float | None = _setting(None, "LTM memories older than this are deleted")
    ltm_max_per_agent: int | None = _setting(
        None, "over this many LTM memories per agent, the oldest go"
    )
    consolidate_interval_s: float = _setting(60.0, "how often each tier's consolidation job runs")
    consolidate_batch: int = _setting(1000, "memories read, compressed and moved per transaction")
    keep_state_after_stm: bool = _setting(False, "copy the raw state JSON into IM and LTM too")
    drift_sample_every: int = _setting(
        100,
        "one in this many encoded states is also decoded at every tier, to watch the "
        "reconstruction error (metrics, stats); 0: off",
    )
    recall_candidates: int | None = _setting(
        None,
        "KNN candidates per tier that a recall re-sorts by feature distance before keeping k; "
        "unset: max(5 x k, 50)",
    )
    stream_max_age_s: float | None = _setting(
        3600.0,
        "state stream entries older than this, once every group has acked them, are trimmed; "
        "off: keep all",
    )
    heartbeat_ttl_s: float = _setting(
        15.0, "a daemon's heartbeat key lives this long; it is rewritten every third of it"
    )
    max_lag: int = _setting(
        10_000, "memory-tiers check fails when more stream entries than this wait unread"
    )
    metrics_port: int | None = _setting(
        None, "port of the daemon's Prometheus endpoint; unset: no endpoint"
    )
    metrics_host: str = _setting("0.0.0.0", "address the Prometheus endpoint listens on")
    stats_interval_s: float = _setting(
        60.0, "how often a daemon adds a sample to the stats time series in Redis"
    )
    stats_samples: int = _setting(1440, "samples the stats time series keeps (a day at 60 s)")
    redis_server: str | None = _setting(None, "redis-server binary for the embedded Redis")
    redis_modules: str | None = _setting(
        None, "module .so files for the embedded Redis, separated by ':'"
    )
    api_host: str = _setting("127.0.0.1", "address the HTTP API and MCP server listen on")
    api_port: int = _setting(8080, "port of the HTTP API (memory-tiers api)")
    api_keys: str | None = _setting(
        None,
        "API keys of the HTTP API and MCP server, separated by commas or spaces (secret: "
        "prefer MT_API_KEYS_FILE, which also limits keys to agents)",
    )
    api_keys_file: str | None = _setting(
        None,
        "file of API keys, one a line: KEY, or KEY<TAB>AGENT_ID<TAB>... to limit it to agents",
    )
    api_max_body_bytes: int = _setting(
        4 * 1024 * 1024, "largest HTTP request body the API reads, in bytes"
    )
    api_max_batch: int = _setting(1000, "most memories one remember request may carry")
    api_timeout_s: float = _setting(
        10.0, "an API request taking longer gets 504; also the API's Redis socket timeout"
    )

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            allowed = _literal_choices(name)
            if allowed and value not in allowed:
                raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        positive = (
            *("batch_size", "block_ms", "stm_dim", "im_dim", "ltm_dim", "consolidate_batch"),
            *("consolidate_interval_s", "heartbeat_ttl_s", "stats_interval_s", "stats_samples"),
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be positive")
        if self.stream_max_age_s is not None and self.stream_max_age_s <= 0:
            raise ConfigError(
                f"stream_max_age_s={self.stream_max_age_s!r}: must be positive, or off"
            )
        if self.recall_candidates is not None and self.recall_candidates < 1:
            raise ConfigError(
                f"recall_candidates={self.recall_candidates!r}: must be positive, or unset"
            )
        if self.drift_sample_every < 0:
            raise ConfigError(
                f"drift_sample_every={self.drift_sample_every!r}: must be 0 (off) or more"
            )
        if self.max_lag < 0:
            raise ConfigError(f"max_lag={self.max_lag!r}: must be 0 or more")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port={self.metrics_port!r}: must be 0..65535")
        if self.consumer_max_idle_s * 1000 < 3 * self.block_ms:
            raise ConfigError(
                f"consumer_max_idle_s={self.consumer_max_idle_s!r}: must be at least 3 x "
                f"block_ms ({3 * self.block_ms / 1000:g} s), or a daemon waiting for entries "
                "could be removed from the group"
            )
        if self.heartbeat_ttl_s * 1000 < 3 * self.block_ms:
            raise ConfigError(
                f"heartbeat_ttl_s={self.heartbeat_ttl_s!r}: must be at least 3 x block_ms "
                f"({3 * self.block_ms / 1000:g} s), or an idle daemon's heartbeat expires "
                "while it waits for entries"
            )
        self._check_api()

    def _check_api(self) -> None:
        """The HTTP API's limits: positive, the port a port."""
        for name in ("api_max_body_bytes", "api_max_batch", "api_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be positive")
        if not 0 <= self.api_port <= 65535:
            raise ConfigError(f"api_port={self.api_port!r}: must be 0..65535")

    def candidates(self, k: int) -> int:
        """KNN candidates per tier a recall of `k` re-sorts: recall_candidates, at least k."""
        wanted = max(5 * k, 50) if self.recall_candidates is None else self.recall_candidates
        return max(wanted, k)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(STM, IM, LTM) vector sizes: what a model must produce to fit the indexes."""
        return (self.stm_dim, self.im_dim, self.ltm_dim)

    def tier(self, name: str) -> TierSettings:
        """The settings of one tier ('stm', 'im' or 'ltm')."""
        if name not in TIERS:
            raise ValueError(f"unknown tier {name!r}: expected one of {', '.join(TIERS)}")
        return TierSettings(
            name=name,
            dim=getattr(self, f"{name}_dim"),
            algorithm=getattr(self, f"{name}_algorithm"),
            datatype=getattr(self, f"{name}_datatype"),
            max_age_s=getattr(self, f"{name}_max_age_s"),
            max_per_agent=getattr(self, f"{name}_max_per_agent"),
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from field names to values, strings parsed; None and missing keep defaults."""
        hints = get_type_hints(cls)
        parsed = {
            name: parse_value(name, hints[name], raw)
            for name, raw in values.items()
            if raw is not None and name in hints
        }
        return cls(**parsed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `MT_<FIELD>` variables, then keyword overrides on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {f.name: env.get(env_var(f.name)) for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values)

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"Settings({values})"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, with any password in the Redis URL and API keys masked, for
        logs."""
        values = dataclasses.asdict(self)
        values["redis_url"] = redact_url(self.redis_url)
        if self.api_keys is not None:
            values["api_keys"] = "***"
        return values


def env_var(name: str) -> str:
    """The environment variable of one settings field."""
    return ENV_PREFIX + name.upper()


_SECRET_QUERY_ARGS = frozenset({"password", "ssl_password"})
"""URL query arguments redis-py reads as secrets."""


def redact_url(url: str | None) -> str | None:
    """`url` with its password (user info, or a password query argument) replaced by '***'."""
    if url is None or "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    credentials, at, host = netloc.rpartition("@")
    if ":" in credentials:  # user:password@ or :password@; a bare user@ is a user name
        netloc = f"{credentials.split(':', 1)[0]}:***{at}{host}"
    query = "&".join(
        f"{arg.split('=', 1)[0]}=***" if arg.split("=", 1)[0] in _SECRET_QUERY_ARGS else arg
        for arg in parts.query.split("&")
        if arg
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def field_type(name: str) -> Any:
    """The declared type of one settings field, without its Optional wrapper."""
    hint = get_type_hints(Settings)[name]
    return _unwrap_optional(hint)


def _literal_choices(name: str) -> tuple[str, ...]:
    hint = field_type(name)
    return get_args(hint) if get_origin(hint) is Literal else ()


def _unwrap_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def parse_value(name: str, hint: Any, raw: Any) -> Any:
    """One field's value from a string (environment) or an already typed value (CLI, code)."""
    if not isinstance(raw, str):
        return raw
    target = _unwrap_optional(hint)
    optional = type(None) in get_args(hint)
    if optional and target is not str and raw.strip().lower() in ("", "none", "off"):
        return None
    if get_origin(target) is Literal:
        return raw
    if target is bool:
        return _parse_bool(name, raw)
    try:
        return target(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{env_var(name)}={raw!r}: expected {target.__name__}") from e


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{env_var(name)}={raw!r}: expected true or false")
