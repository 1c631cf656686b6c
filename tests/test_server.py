"""The embedded Redis: starts with vector search, persists, stops, never outlives its parent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from memory_tiers import ServerError
from memory_tiers.server import EmbeddedRedis


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def create_vector_index_and_search(client: redis.Redis) -> list[str]:
    """FT.CREATE a 4-d FLAT index, add two vectors, return KNN-1 ids for a query."""
    client.execute_command(
        "FT.CREATE", "t:idx", "ON", "HASH", "PREFIX", "1", "t:", "SCHEMA",
        "v", "VECTOR", "FLAT", "6", "TYPE", "FLOAT32", "DIM", "4", "DISTANCE_METRIC", "L2",
    )  # fmt: skip
    client.hset("t:a", "v", np.array([1, 0, 0, 0], np.float32).tobytes())
    client.hset("t:b", "v", np.array([0, 1, 0, 0], np.float32).tobytes())
    query = np.array([0.1, 0.9, 0, 0], np.float32).tobytes()
    reply = client.execute_command(
        "FT.SEARCH", "t:idx", "*=>[KNN 1 @v $q]", "PARAMS", "2", "q", query,
        "RETURN", "0", "DIALECT", "2",
    )  # fmt: skip
    return [k.decode() if isinstance(k, bytes) else k for k in reply[1:]]


def test_session_server_has_vector_search(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    client = redis.Redis.from_url(redis_server.url, protocol=2)
    assert create_vector_index_and_search(client) == ["t:b"]
    assert redis_client.execute_command("FT._LIST") == ["t:idx"]
    client.close()


def test_start_stop_leaves_no_process_and_removes_temp_dir() -> None:
    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    pid = int(client.info("server")["process_id"])
    config = client.config_get("*")
    data_dir = Path(config["dir"])
    assert pid == server.pid and pid_alive(pid)
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")
    assert config["bind"] == "127.0.0.1"
    client.close()
    server.stop()
    assert not pid_alive(pid)
    assert not data_dir.exists()
    server.stop()  # a second stop is harmless


def test_data_dir_keeps_data_across_restarts(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path) as server:
        redis.Redis.from_url(server.url).set("mt:persisted", "yes")
    assert list(tmp_path.glob("appendonlydir/*.aof")), "AOF files are written"
    with EmbeddedRedis(data_dir=tmp_path) as server:
        assert redis.Redis.from_url(server.url).get("mt:persisted") == b"yes"


def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from memory_tiers.server import EmbeddedRedis\n"
        "s = EmbeddedRedis().start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert pid_alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_gone(pid), f"redis-server {pid} outlived its killed parent"


def test_missing_server_binary_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"memory-tiers\[server\] or set MT_REDIS_URL"):
        EmbeddedRedis(server=str(tmp_path / "no-redis-server")).start()


def test_missing_module_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"no-search\.so.*memory-tiers\[server\]"):
        EmbeddedRedis(modules=str(tmp_path / "no-search.so")).start()


def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    bogus_module = tmp_path / "bogus.so"
    bogus_module.write_bytes(b"not a shared object")
    with pytest.raises(ServerError, match="exited with code"):
        EmbeddedRedis(modules=str(bogus_module)).start()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_redis_prints_a_working_url_and_stops_clean(stop_signal: signal.Signals) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "memory_tiers", "redis"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert cli.stdout is not None
    url = cli.stdout.readline().strip()
    assert url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(url, protocol=2)
    pid = int(client.info("server")["process_id"])
    assert create_vector_index_and_search(client) == ["t:b"]
    client.close()
    cli.send_signal(stop_signal)
    assert cli.wait(timeout=20) == 0
    assert wait_gone(pid), "redis-server outlived `memory-tiers redis`"
