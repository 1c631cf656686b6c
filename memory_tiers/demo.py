"""The main job on the embedded default, in about a minute, cleaning up after itself.

An embedded Redis and the daemon (ingest and scheduled consolidation) run in this process;
50 simulated agents XADD their states; memories flow STM -> IM -> LTM on a fast schedule;
then a few recalls show what an agent gets back from each tier.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import redis

from .client import MemoryClient, Recall
from .constants import TIERS
from .daemon import Daemon, load_engine
from .engine import EmbeddingEngine
from .server import EmbeddedRedis
from .settings import Settings
from .sim import Simulation
from .status import health, snapshot

Echo = Callable[[str], None]

DEMO_AGENTS = 50
"""Simulated agents streaming their states."""

DEMO_STEPS_PER_S = 20
"""Simulation steps per second: 50 agents x 20 = 1,000 states/s."""

DEMO_POLICY = {
    "stm_max_age_s": 8.0,
    "stm_max_per_agent": 150,
    "im_max_age_s": 20.0,
    "im_max_per_agent": 300,
    "consolidate_interval_s": 2.0,
}
"""A fast consolidation schedule, so memories visibly reach IM and LTM within the demo."""

BAD_ENTRIES = (
    {"state": '{"health": 50}'},
    {"agent_id": "agent-000", "state": "{not json"},
    {"agent_id": "agent-001", "state": '{"health": NaN}'},
)
"""Entries that break the protocol: the daemon dead-letters them and keeps going."""


def run_demo(settings: Settings, seconds: float, echo: Echo) -> None:
    """Run the whole demo for `seconds` of streaming, printing progress with `echo`."""
    settings = dataclasses.replace(settings, **DEMO_POLICY)  # type: ignore[arg-type]
    engine = load_engine(settings)
    echo(f"model {engine.version} ({'trained' if engine.trained else 'UNTRAINED'})")
    with EmbeddedRedis.from_settings(settings) as server:
        settings = dataclasses.replace(settings, redis_url=server.url)
        echo(f"embedded Redis with vector search at {server.url}")
        connection = redis.Redis.from_url(server.url)
        with closing(connection), MemoryClient(connection, settings, engine) as client:
            with _running_daemon(settings, engine):
                echo(_plan(settings))
                simulation = Simulation(num_agents=DEMO_AGENTS, seed=42)
                first_state = dict(simulation.agents[0].get_state_data())
                sent = _stream(client, simulation, seconds, echo)
                _drain(client, sent, echo)
                echo(f"memory-tiers check: {_health(client, settings)}")
                last_state = dict(simulation.agents[0].get_state_data())
            _show_recalls(client, first_state, last_state, echo)
    echo("demo done: Redis stopped and its data removed")


def _plan(settings: Settings) -> str:
    stm, im = settings.tier("stm"), settings.tier("im")
    return (
        f"{DEMO_AGENTS} agents stream {DEMO_AGENTS * DEMO_STEPS_PER_S:,} states/s; "
        f"STM keeps {stm.max_per_agent}/agent or {stm.max_age_s:.0f} s, "
        f"IM {im.max_per_agent}/agent or {im.max_age_s:.0f} s; consolidation every "
        f"{settings.consolidate_interval_s:.0f} s"
    )


@contextmanager
def _running_daemon(settings: Settings, engine: EmbeddingEngine) -> Iterator[Daemon]:
    daemon = Daemon(settings, engine=engine, handle_signals=False, consumer="demo")
    thread = threading.Thread(target=daemon.run, name="ingest", daemon=True)
    thread.start()
    daemon.wait_started(30)
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)


def _stream(client: MemoryClient, simulation: Simulation, seconds: float, echo: Echo) -> int:
    """Step the simulation at a steady pace, XADDing every agent's state; return how many.

    The last states sent are the simulation's current ones.
    """
    sent, started, last_report = 0, time.monotonic(), 0.0
    bad = list(BAD_ENTRIES)
    while True:
        client.remember_many(
            {"agent_id": s["agent_id"], "state": s, "step": simulation.step_count}
            for s in simulation.states()
        )
        sent += len(simulation.agents)
        elapsed = time.monotonic() - started
        if bad and elapsed > seconds * (len(BAD_ENTRIES) - len(bad) + 1) / 4:
            client.redis.xadd(client.keys.stream, bad.pop())  # type: ignore[arg-type]
            sent += 1
        if elapsed - last_report >= 2.0:
            echo(_progress(client, sent, f"t={elapsed:4.0f}s"))
            last_report = elapsed
        if elapsed >= seconds:
            return sent
        time.sleep(max(0.0, (simulation.step_count + 1) / DEMO_STEPS_PER_S - elapsed))
        simulation.step()


def _drain(client: MemoryClient, sent: int, echo: Echo, timeout_s: float = 30.0) -> None:
    """Wait until every sent entry is in a tier or the dead letters."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sum(_snapshot(client).values()) < sent:
        time.sleep(0.2)
    echo(_progress(client, sent, "final "))


def _health(client: MemoryClient, settings: Settings) -> str:
    """What `memory-tiers check` says now: the daemon's heartbeat and the stream's lag."""
    status = snapshot(client.one_redis, client.keys, count_lag_up_to=settings.max_lag + 1)
    return health(status, client.keys, settings.max_lag)[1]


def _snapshot(client: MemoryClient) -> dict[str, int]:
    """Memories per tier and dead letters, read in one transaction so a move is not seen twice."""
    pipe = client.redis.pipeline(transaction=True)
    for tier in TIERS:
        pipe.zcard(client.keys.time_index(tier))
    pipe.xlen(client.keys.dead_letters)
    return dict(zip((*TIERS, "dead"), map(int, pipe.execute()), strict=True))


def _progress(client: MemoryClient, sent: int, when: str) -> str:
    counts = _snapshot(client)
    stored = sum(counts[tier] for tier in TIERS)
    tiers = "  ".join(f"{t.upper()} {counts[t]:>6,}" for t in TIERS)
    return f"{when}  sent {sent:>7,}  stored {stored:>7,}  {tiers}  dead {counts['dead']}"


def _show_recalls(
    client: MemoryClient, first: dict[str, Any], last: dict[str, Any], echo: Echo
) -> None:
    """Recall one agent's newest and very first states, then list the dead letters."""
    agent_id = str(first["agent_id"])
    for label, state in (("its newest state", last), ("its first state, long consolidated", first)):
        echo(f"\nrecall for {agent_id}, query = {label}:")
        echo(_recall_table(client, client.recall(agent_id, state, k=5)))
    dead: list[tuple[bytes, dict[bytes, bytes]]] = client.redis.xrange(  # type: ignore[assignment]
        client.keys.dead_letters
    )
    echo(f"\ndead letters ({len(dead)}), each with its reason; the daemon kept going:")
    for _, fields in dead:
        echo(f"  {fields[b'error'].decode()}")


def _recall_table(client: MemoryClient, recall: Recall) -> str:
    lines = ["  rank  tier  feature dist  step  state (reconstructed for IM/LTM)"]
    for rank, item in enumerate(recall.merged, start=1):
        state = item.hit.state or client.reconstruct(item).state
        summary = (
            f"{state.get('agent_type')}/{state.get('current_action')} "
            f"health={float(state.get('health', 0)):.0f} energy={float(state.get('energy', 0)):.0f}"
        )
        lines.append(
            f"  {rank:>4}  {item.tier.upper():<4}  {item.feature_distance:>12.6f}  "
            f"{item.hit.step:>4}  {summary}"
        )
    return "\n".join(lines)
