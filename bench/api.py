"""HTTP API cost: recall latency and remember throughput over HTTP against in-process calls.

One run on an embedded Redis (or MT_REDIS_URL, under the prefix `mtbench`, cleaned first and
last): it remembers --agents x --per-agent states and lets an in-process daemon store them,
starts `memory-tiers api` as a child process (its own interpreter, as deployed), then:

- recall: --recalls state queries, each sent alternately over HTTP (httpx, keep-alive) and to
  an in-process `MemoryClient.recall` on the same data and model; p50/p99 of each, the ratio,
  and the goal HTTP p99 <= 2 x in-process p99 + 1 ms;
- remember: --remember states XADDed in batches of --batch over POST /v1/memories/batch and
  through `MemoryClient.remember_many`; states/s of each and the ratio.

    python bench/api.py [--agents 50] [--per-agent 100] [--recalls 300] [--remember 20000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from machine import clean, machine

from memory_tiers import MemoryClient, Settings
from memory_tiers.daemon import Daemon
from memory_tiers.server import redis_url
from memory_tiers.sim import simulate_states

PREFIX = "mtbench"
PORT = 18_080


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def seed(client: MemoryClient, settings: Settings, agents: int, per_agent: int) -> None:
    """Remember agents x per_agent simulated states and wait until a daemon stored them."""
    states = simulate_states(agents * per_agent, num_agents=agents, seed=1)
    items = [{"agent_id": s["agent_id"], "state": s, "step": i} for i, s in enumerate(states)]
    for start in range(0, len(items), 1000):
        client.remember_many(items[start : start + 1000])
    daemon = Daemon(settings, consumer="bench-api", torch_threads=1, consolidate=False)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    while client.store.count("stm") < len(items):
        if not thread.is_alive():
            raise SystemExit("the daemon stopped before storing every state (see its error)")
        time.sleep(0.1)
    daemon.request_stop()
    thread.join(30)


def start_api(url: str, key_file: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
    env.update(MT_REDIS_URL=url, MT_PREFIX=PREFIX, MT_API_KEYS_FILE=str(key_file),
               MT_API_PORT=str(PORT), MT_LOG_LEVEL="WARNING")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "memory_tiers", "api"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/livez").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("memory-tiers api did not start within 60 s")


def bench_recall(http: httpx.Client, client: MemoryClient, agents: int, n: int) -> None:
    queries = simulate_states(n, num_agents=agents, seed=2)
    client.recall(str(queries[0]["agent_id"]), queries[0])  # load and warm both sides
    http.post("/v1/recall", json={"agent_id": queries[0]["agent_id"], "state": queries[0]})
    over_http: list[float] = []
    in_process: list[float] = []
    for query in queries:
        agent = str(query["agent_id"])
        started = time.perf_counter()
        reply = http.post("/v1/recall", json={"agent_id": agent, "state": query, "k": 10})
        over_http.append(time.perf_counter() - started)
        assert reply.status_code == 200, reply.text
        started = time.perf_counter()
        client.recall(agent, query, k=10)
        in_process.append(time.perf_counter() - started)
    (h50, h99), (p50, p99) = percentiles(over_http), percentiles(in_process)
    goal = 2 * p99 + 1
    print(f"recall, {n} state queries, k=10, 3 tiers:")
    print(f"  in-process MemoryClient.recall  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"  HTTP POST /v1/recall            p50 {h50:6.2f} ms  p99 {h99:6.2f} ms")
    print(f"  ratio p50 {h50 / p50:.2f}  p99 {h99 / p99:.2f};  goal p99 <= {goal:.2f} ms: "
          f"{'met' if h99 <= goal else 'NOT met'}")  # fmt: skip


def bench_remember(http: httpx.Client, client: MemoryClient, n: int, batch: int) -> None:
    states = simulate_states(n, num_agents=50, seed=3)
    items: list[dict[str, Any]] = [{"agent_id": s["agent_id"], "state": s} for s in states]
    batches = [items[i : i + batch] for i in range(0, n, batch)]
    started = time.perf_counter()
    for chunk in batches:
        reply = http.post("/v1/memories/batch", json={"items": chunk})
        assert reply.status_code == 201, reply.text
    over_http = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for chunk in batches:
        client.remember_many(chunk)
    in_process = n / (time.perf_counter() - started)
    print(f"remember, {n} states in batches of {batch}:")
    print(f"  MemoryClient.remember_many  {in_process:9,.0f} states/s")
    ratio = over_http / in_process
    print(f"  HTTP /v1/memories/batch     {over_http:9,.0f} states/s   ratio {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--per-agent", type=int, default=100)
    parser.add_argument("--recalls", type=int, default=300)
    parser.add_argument("--remember", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    base = Settings.from_env(prefix=PREFIX)
    with redis_url(base) as url, tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env(prefix=PREFIX, redis_url=url)
        raw = redis.Redis.from_url(url)
        clean(raw, PREFIX)
        key_file = Path(folder) / "keys"
        key = secrets.token_urlsafe()
        key_file.write_text(key + "\n")
        client = MemoryClient(redis.Redis.from_url(url), settings)
        try:
            seed(client, settings, args.agents, args.per_agent)
            api = start_api(url, key_file)
            headers = {"Authorization": f"Bearer {key}"}
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", headers=headers,
                                  timeout=60) as http:  # fmt: skip
                    bench_recall(http, client, args.agents, args.recalls)
                    bench_remember(http, client, args.remember, args.batch)
            finally:
                api.terminate()
                api.wait(30)
        finally:
            clean(raw, PREFIX)


if __name__ == "__main__":
    main()
