"""Featurization speed: `FeatureSchema.extract_batch` against the per-state path, same states.

Two mixes of --states states, each parsed from JSON as the daemon parses them:

sim     `simulate_states`: every field present, 11x11 grids, no unknown keys.
heavy   `sample_states` over the default schema with --agents agents: fields left out, unknown
        numeric and string keys, grids of 5x5 to 18x18 (square or not), categories outside the
        declared values.

Per mix it times, in one run on the same states: the per-state path (`extract` once per state,
rows stacked), `extract_batch` and `extract_valid` with an ignored-key counter (what the daemon
calls). Each is run --repeat times, in turns, and the fastest run counts (other work on a shared
box only ever adds time; taking turns spreads a busy spell over all three). It prints CPU
microseconds per state (this process's CPU time: one thread) and the ratio per-state / batch
(the goal: >= 5), after checking that both give the same features.

    python bench/featurize.py [--states 10000] [--agents 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from machine import machine

from memory_tiers.features import DEFAULT_SCHEMA
from memory_tiers.sampling import sample_states
from memory_tiers.sim import simulate_states


def per_state(states: Sequence[Any]) -> np.ndarray:
    """The per-state path: one `extract` call per state."""
    return np.stack([DEFAULT_SCHEMA.extract(state) for state in states])


def batch(states: Sequence[Any]) -> np.ndarray:
    """The batch path."""
    return DEFAULT_SCHEMA.extract_batch(states)


def valid(states: Sequence[Any]) -> np.ndarray:
    """The daemon's call: bad states set aside, ignored keys counted."""
    features, _, _ = DEFAULT_SCHEMA.extract_valid(states, Counter())
    return features


def fastest_cpu_s(
    runs: dict[str, Callable[[Sequence[Any]], np.ndarray]], states: Sequence[Any], n: int
) -> dict[str, float]:
    """CPU seconds of the fastest of `n` runs of each, taken in turns (one run of each per
    round), so that a busy spell on a shared box falls on all of them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(n):
        for label, run in runs.items():
            start = time.process_time()
            run(states)
            best[label] = min(best[label], time.process_time() - start)
    return best


def mixes(num_states: int, agents: int) -> dict[str, list[Any]]:
    """The two state mixes, each through a JSON round trip as the daemon receives them."""
    sim = simulate_states(num_states, num_agents=50, seed=0)
    heavy = sample_states(DEFAULT_SCHEMA, num_states, num_agents=agents, seed=0)
    return {
        name: json.loads(json.dumps(states)) for name, states in (("sim", sim), ("heavy", heavy))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=1_000, help="agents of the heavy mix")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.states:,} states per mix, fastest of {args.repeat}")
    print(f"{'mix':<7}{'per-state us':>14}{'batch us':>10}{'valid us':>10}{'ratio':>8}")
    for name, states in mixes(args.states, args.agents).items():
        if not np.array_equal(per_state(states), batch(states)):
            raise SystemExit(f"{name}: extract_batch differs from extract")
        runs = {"per-state": per_state, "batch": batch, "valid": valid}
        micro = {
            label: seconds / len(states) * 1e6
            for label, seconds in fastest_cpu_s(runs, states, args.repeat).items()
        }
        ratio = micro["per-state"] / micro["batch"]
        print(
            f"{name:<7}{micro['per-state']:>14.1f}{micro['batch']:>10.1f}"
            f"{micro['valid']:>10.1f}{ratio:>7.1f}x"
        )


if __name__ == "__main__":
    main()
