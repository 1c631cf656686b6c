"""API keys of the HTTP API and the MCP server: read from settings, checked per request.

Keys come from `settings.api_keys` (MT_API_KEYS: keys separated by commas or whitespace, each
for every agent) and `settings.api_keys_file` (MT_API_KEYS_FILE: one key a line, `KEY` for
every agent or `KEY<TAB>AGENT<TAB>AGENT...` for those agents only; blank lines and lines
starting with '#' are skipped). A tab separates the agents because agent ids may hold any
character but control characters (protocol.tag_problem), so no id can contain one.

Only SHA-256 digests of the keys are kept after loading, and a presented key is compared
with every digest in constant time: neither the keys nor a timing difference leaves this
module. Nothing here logs a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .protocol import tag_problem
from .settings import Settings

MIN_KEY_LENGTH = 16
"""Shortest API key accepted: a short key is a guessable one."""

_KEY_PATTERN = re.compile(r"[\x21-\x7e]{" + str(MIN_KEY_LENGTH) + ",256}")
"""A key: 16 to 256 printable ASCII characters, no spaces (they travel in HTTP headers)."""


@dataclass(frozen=True)
class ApiKey:
    """One accepted key, known by its digest, and the agents it may read and write."""

    digest: bytes
    agents: frozenset[str] | None
    """The agent ids this key is limited to; None: every agent."""
    label: str
    """Where it came from, for messages ('MT_API_KEYS #2', 'keys.txt line 4'): never the key."""

    def allows(self, agent_id: str) -> bool:
        """Whether this key may remember and recall for `agent_id`."""
        return self.agents is None or agent_id in self.agents


class ApiKeys:
    """The keys a server accepts; `find` tells which one a request presented."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The keys of `settings.api_keys` and the file `settings.api_keys_file`.

        Raises:
            ConfigError: the file cannot be read, or a key or agent id in it is malformed
                (the message names the line, never the key).
        """
        keys: list[ApiKey] = []
        if settings.api_keys:
            for n, key in enumerate(re.split(r"[\s,]+", settings.api_keys.strip()), 1):
                keys.append(_api_key(key, None, f"MT_API_KEYS key #{n}"))
        if settings.api_keys_file:
            keys.extend(_keys_in_file(Path(settings.api_keys_file)))
        digests = [k.digest for k in keys]
        if len(set(digests)) != len(digests):
            raise ConfigError("an API key is listed twice (MT_API_KEYS, MT_API_KEYS_FILE)")
        return cls(keys)

    def find(self, presented: str | None) -> ApiKey | None:
        """The key matching `presented`, or None; every key is compared, in constant time."""
        if not presented:
            return None
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def _keys_in_file(path: Path) -> list[ApiKey]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"MT_API_KEYS_FILE {path}: cannot be read: {e}") from e
    keys = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, *agents = line.rstrip("\r\n").split("\t")
        label = f"{path.name} line {number}"
        keys.append(_api_key(key.strip(), agents or None, label))
    return keys


def _api_key(key: str, agents: list[str] | None, label: str) -> ApiKey:
    if not _KEY_PATTERN.fullmatch(key):
        raise ConfigError(
            f"API key of {label}: expected {MIN_KEY_LENGTH} to 256 printable ASCII characters "
            "without spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )
    for agent in agents or ():
        problem = tag_problem(agent)
        if problem:
            raise ConfigError(f"agent id {agent!r} of {label} {problem}")
    return ApiKey(_digest(key), None if agents is None else frozenset(agents), label)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
