"""One typed settings object, filled from `MT_*` environment variables or CLI options.

Each field's metadata carries its help text and the values it allows; the CLI builds its
options (and their typed `--help`) from these fields and `Settings.from_env` reads the same
names, so the two never drift apart. Every value is checked when a Settings is made, and an
error names the variable, the value and what is allowed: `MT_STM_MAX_AGE_S=-5.0: expected a
number of seconds, 0 or more, or off`.

Why a dataclass and not pydantic-settings (measured 2026-11-30, 2-core box): pydantic-settings
is not among our dependencies (redisvl brings pydantic only), and building one pydantic model
with a RedisDsn field adds 175 ms to every command's start (`memory-tiers` import 598 ms ->
773 ms, median of 9), which the Docker HEALTHCHECK pays every 30 s; its errors name fields,
not the `MT_*` variables; its CLI is argparse, not our click commands; and Settings is a
frozen dataclass that 26 call sites copy with `dataclasses.replace`. The URL is checked by
redis-py's own parser (`redis.connection.parse_url`), the one that will read it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import types
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .constants import DEFAULT_PREFIX, MAX_BUCKETS, TIERS, Keys
from .errors import ConfigError

ENV_PREFIX = "MT_"
"""Environment variables that fill settings start with this: `MT_REDIS_URL`, `MT_BATCH_SIZE`."""

PACKAGED_MODEL = "state_autoencoder.pt"
"""File name of the default model inside the package `memory_tiers.models`."""

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""What a Redis URL starts with (redis-py's schemes)."""

POLICY_FIELDS = tuple(f"{tier}_{rule}" for tier in TIERS for rule in ("max_age_s", "max_per_agent"))
"""The settings that decide which memories consolidation moves down (or deletes)."""

Algorithm = Literal["FLAT", "HNSW"]
Datatype = Literal["float32", "float16"]


@dataclass(frozen=True)
class Allowed:
    """The values a setting allows beyond its type: a test, and the words that say it."""

    test: Callable[[Any], bool]
    says: str


def _at_least(bound: float) -> Allowed:
    return Allowed(lambda v: v >= bound, f"{bound:g} or more")


def _above(bound: float) -> Allowed:
    return Allowed(lambda v: v > bound, f"above {bound:g}")


_PORT = Allowed(lambda v: 0 <= v <= 65535, "from 0 to 65535 (0: any free port)")
_NAME = Allowed(
    lambda v: bool(v) and not any(c.isspace() or not c.isprintable() for c in v),
    "not empty, without spaces or control characters",
)


def _setting(default: Any, help: str, allowed: Allowed | None = None) -> Any:
    return field(default=default, metadata={"help": help, "allowed": allowed})


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
    """Everything a daemon, client or command needs to know, with production defaults.

    Raises:
        ConfigError: a value is not allowed; the message names its `MT_*` variable.
    """

    redis_url: str | None = _setting(
        None,
        "Redis URL, redis:// or rediss:// (unix:// for a socket), user and password in it; "
        "unset: embedded Redis",
    )
    prefix: str = _setting(DEFAULT_PREFIX, "namespace of every key, stream and index", _NAME)
    model_path: str | None = _setting(
        None, "trained autoencoder checkpoint; unset: the default model shipped in the package"
    )
    batch_size: int = _setting(
        256, "stream entries read, encoded and written together", _at_least(1)
    )
    block_ms: int = _setting(1000, "how long one XREADGROUP waits for new entries", _at_least(1))
    claim_idle_ms: int = _setting(
        60_000, "entries pending this long are claimed from dead consumers", _at_least(1)
    )
    consumer_max_idle_s: float = _setting(
        3600.0,
        "consumers of the group idle this long with nothing pending are removed (XGROUP "
        "DELCONSUMER); a daemon that comes back is added again",
        _above(0),
    )
    stm_dim: int = _setting(384, "STM vector size", _at_least(1))
    im_dim: int = _setting(128, "IM vector size", _at_least(1))
    ltm_dim: int = _setting(32, "LTM vector size", _at_least(1))
    stm_algorithm: Algorithm = _setting("FLAT", "STM index type: FLAT or HNSW")
    im_algorithm: Algorithm = _setting("FLAT", "IM index type: FLAT or HNSW")
    ltm_algorithm: Algorithm = _setting("FLAT", "LTM index type: FLAT or HNSW")
    stm_datatype: Datatype = _setting("float32", "STM vector type: float32 or float16")
    im_datatype: Datatype = _setting("float32", "IM vector type: float32 or float16")
    ltm_datatype: Datatype = _setting("float32", "LTM vector type: float32 or float16")
    stm_max_age_s: float | None = _setting(
        3600.0, "STM memories older than this move to IM", _at_least(0)
    )
    stm_max_per_agent: int | None = _setting(
        1000, "over this many STM memories per agent, the oldest move", _at_least(0)
    )
    im_max_age_s: float | None = _setting(
        86_400.0, "IM memories older than this move to LTM", _at_least(0)
    )
    im_max_per_agent: int | None = _setting(
        10_000, "over this many IM memories per agent, the oldest move", _at_least(0)
    )
    ltm_max_age_s: float | None = _setting(
        None, "LTM memories older than this are deleted", _at_least(0)
    )
    ltm_max_per_agent: int | None = _setting(
        None, "over this many LTM memories per agent, the oldest go", _at_least(0)
    )
    consolidate_interval_s: float = _setting(
        60.0, "how often each tier's consolidation job runs", _above(0)
    )
    consolidate_batch: int = _setting(
        1000, "memories read, compressed and moved per transaction", _at_least(1)
    )
    keep_state_after_stm: bool = _setting(False, "copy the raw state JSON into IM and LTM too")
    buckets: int = _setting(
        1,
        "buckets the agents are sharded into over a Redis Cluster (buckets.py), fixed for a "
        "deployment's life; 1: one Redis",
        Allowed(lambda v: 1 <= v <= MAX_BUCKETS, f"from 1 to {MAX_BUCKETS}"),
    )
    drift_sample_every: int = _setting(
        100,
        "one in this many encoded states is also decoded at every tier, to watch the "
        "reconstruction error (metrics, stats); 0: off",
        _at_least(0),
    )
    recall_candidates: int | None = _setting(
        None,
        "KNN candidates per tier that a recall re-sorts by feature distance before keeping k; "
        "unset: max(5 x k, 50)",
        _at_least(1),
    )
    stream_max_age_s: float | None = _setting(
        3600.0,
        "state stream entries older than this, once every group has acked them, are trimmed; "
        "off: keep all",
        _above(0),
    )
    heartbeat_ttl_s: float = _setting(
        15.0,
        "a daemon's heartbeat key lives this long; it is rewritten every third of it",
        _above(0),
    )
    max_lag: int = _setting(
        10_000,
        "memory-tiers check fails when more stream entries than this wait unread",
        _at_least(0),
    )
    metrics_port: int | None = _setting(
        None, "port of the daemon's Prometheus endpoint; unset: no endpoint", _PORT
    )
    metrics_host: str = _setting("0.0.0.0", "address the Prometheus endpoint listens on", _NAME)
    stats_interval_s: float = _setting(
        60.0, "how often a daemon adds a sample to the stats time series in Redis", _above(0)
    )
    stats_samples: int = _setting(
        1440, "samples the stats time series keeps (a day at 60 s)", _at_least(1)
    )
    redis_server: str | None = _setting(None, "redis-server binary for the embedded Redis")
    redis_modules: str | None = _setting(
        None, "module .so files for the embedded Redis, separated by ':'"
    )
    api_host: str = _setting("127.0.0.1", "address the HTTP API and MCP server listen on", _NAME)
    api_port: int = _setting(8080, "port of the HTTP API (memory-tiers api)", _PORT)
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
        4 * 1024 * 1024, "largest HTTP request body the API reads, in bytes", _at_least(1)
    )
    api_max_batch: int = _setting(
        1000, "most memories one remember request may carry", _at_least(1)
    )
    api_timeout_s: float = _setting(
        10.0,
        "an API request taking longer gets 504; also the API's Redis socket timeout",
        _above(0),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            canonical = check_value(f.name, value)
            if canonical is not value:  # an enum value in another case: keep its own spelling
                object.__setattr__(self, f.name, canonical)
        if self.redis_url:
            check_redis_url(self.redis_url)
        if self.model_path and Path(self.model_path).is_dir():
            raise ConfigError(
                f"{env_var('model_path')}={self.model_path!r}: a folder, expected a checkpoint "
                "file (or unset: the default model)"
            )
        for name in ("consumer_max_idle_s", "heartbeat_ttl_s"):
            if getattr(self, name) * 1000 < 3 * self.block_ms:
                raise ConfigError(
                    f"{env_var(name)}={getattr(self, name)!r}: must be at least 3 x "
                    f"{env_var('block_ms')} ({3 * self.block_ms / 1000:g} s), or "
                    + (
                        "a daemon waiting for entries could be removed from the group"
                        if name == "consumer_max_idle_s"
                        else "an idle daemon's heartbeat expires while it waits for entries"
                    )
                )

    def policy(self) -> dict[str, float | int | None]:
        """The consolidation policy: POLICY_FIELDS and their values (a daemon's heartbeat)."""
        return {name: getattr(self, name) for name in POLICY_FIELDS}

    @property
    def model_file(self) -> Path:
        """The checkpoint to load: model_path, or the default model shipped in the package."""
        return Path(self.model_path) if self.model_path else packaged_model()

    def candidates(self, k: int) -> int:
        """KNN candidates per tier a recall of `k` re-sorts: recall_candidates, at least k."""
        wanted = max(5 * k, 50) if self.recall_candidates is None else self.recall_candidates
        return max(wanted, k)

    @property
    def keys(self) -> Keys:
        """The names of this deployment's keys, streams and indexes, under `prefix`."""
        return Keys(self.prefix)

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
        hints = _hints()
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
    hint = _hints()[name]
    return _unwrap_optional(hint)


def _unwrap_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def parse_value(name: str, hint: Any, raw: Any) -> Any:
    """One field's value from a string (environment) or an already typed value (CLI, code).

    Raises:
        ConfigError: the string is not of the field's type, naming its variable.
    """
    if not isinstance(raw, str):
        return raw
    target = _unwrap_optional(hint)
    optional = type(None) in get_args(hint)
    if optional and raw.strip().lower() in (("",) if target is str else ("", "none", "off")):
        return None
    if get_origin(target) is Literal or target is str:
        return raw  # checked with the other values when the Settings is made
    if target is bool:
        return _parse_bool(name, raw)
    try:
        return target(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{env_var(name)}={raw!r}: expected {allowed_values(name)}") from e


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{env_var(name)}={raw!r}: expected {allowed_values(name)}")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


@functools.cache
def _hints() -> dict[str, Any]:
    """Settings' field types, resolved once (get_type_hints costs ~1 ms a call)."""
    return get_type_hints(Settings)


def packaged_model() -> Path:
    """The default model's checkpoint, shipped in the package `memory_tiers.models`."""
    spec = importlib.util.find_spec("memory_tiers.models")
    if spec is None or spec.origin is None:  # a broken install: the loader says it is missing
        return Path(__file__).parent / "models" / PACKAGED_MODEL
    return Path(spec.origin).parent / PACKAGED_MODEL


def allowed_values(name: str) -> str:
    """What a settings field allows, in words: 'an integer, 1 or more', 'FLAT or HNSW'."""
    hint = _hints()[name]
    words = _kind(name)[1]
    allowed: Allowed | None = _FIELDS[name].metadata["allowed"]
    if allowed is not None:
        words += f", {allowed.says}"
    if type(None) in get_args(hint):
        words += ", or unset" if field_type(name) is str else ", or off"
    return words


def setting_metavar(name: str) -> str:
    """The value placeholder of a settings option in --help: INTEGER, SECONDS|off, [FLAT|HNSW]."""
    optional = type(None) in get_args(_hints()[name])
    return _kind(name)[0] + ("|off" if optional and field_type(name) is not str else "")


def _kind(name: str) -> tuple[str, str]:
    """(--help placeholder, words) of a settings field's type."""
    target = field_type(name)
    if get_origin(target) is Literal:
        choices = get_args(target)
        words = f"{', '.join(choices[:-1])} or {choices[-1]} (any case)"
        return "[" + "|".join(choices) + "]", words
    if target is bool:
        return "BOOLEAN", "true or false (also 1/0, yes/no, on/off)"
    if target is str:
        texts = {
            "redis_url": ("URL", f"a Redis URL ({_schemes()})"),
            "model_path": ("FILE", "a checkpoint file"),
            "redis_server": ("FILE", "a file"),
            "redis_modules": ("PATHS", "files separated by ':'"),
            "metrics_host": ("HOST", "a host name or address"),
            "api_host": ("HOST", "a host name or address"),
            "api_keys": ("KEYS", "keys separated by commas or spaces"),
            "api_keys_file": ("FILE", "a file"),
        }
        return texts.get(name, ("TEXT", "text"))
    if name.endswith("_ms"):
        return "MS", "an integer number of milliseconds"
    if name.endswith("_s"):
        return "SECONDS", "a number of seconds"
    return ("INTEGER", "an integer") if target is int else ("NUMBER", "a number")


def check_value(name: str, value: Any) -> Any:
    """`value` if settings field `name` allows it (an enum value in its declared case).

    Raises:
        ConfigError: naming the field's variable, the value and what is allowed.
    """
    hint = _hints()[name]
    target = _unwrap_optional(hint)
    if value is None and type(None) in get_args(hint):
        return value
    if get_origin(target) is Literal and isinstance(value, str):
        for choice in get_args(target):
            if value.strip().lower() == choice.lower():
                return choice
    elif _has_type(value, target):
        allowed: Allowed | None = _FIELDS[name].metadata["allowed"]
        if allowed is None or allowed.test(value):
            return value
    raise ConfigError(f"{env_var(name)}={value!r}: expected {allowed_values(name)}")


def _has_type(value: Any, target: Any) -> bool:
    if isinstance(value, bool):
        return target is bool
    if target is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, target) if isinstance(target, type) else False


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL that redis-py cannot use, before anything connects with it.

    Raises:
        ConfigError: naming MT_REDIS_URL, the URL (its password masked) and what is wrong.
    """
    import redis.connection

    shown = redact_url(url if "://" in url else "redis://" + url)
    if "://" not in url:
        assert shown is not None
        raise ConfigError(
            f"{env_var('redis_url')}={shown.removeprefix('redis://')!r}: not a Redis URL, "
            f"expected one starting with {_schemes()} (did you mean {shown!r}?)"
        )
    try:
        redis.connection.parse_url(url)
    except ValueError as e:
        raise ConfigError(
            f"{env_var('redis_url')}={shown!r}: not a Redis URL ({e}), expected one starting "
            f"with {_schemes()}"
        ) from e


def _schemes() -> str:
    return ", ".join(REDIS_SCHEMES[:-1]) + " or " + REDIS_SCHEMES[-1]
