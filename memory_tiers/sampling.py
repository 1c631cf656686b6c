"""States sampled across a whole feature schema: training and evaluation data unlike any one world.

The simulation covers a narrow corner of the default schema (11x11 grids of its own making, its
own agent types, every field present). Users' agents do not look like it, so a model trained on
the simulation alone serves them badly. `sample_states` draws agents whose states cover the
schema broadly, while each agent's states still form a trajectory (a real agent's memories have
neighbours, which is what recall is for):

- each agent has a profile: which declared fields it sends (each present with probability
  0.85), the shape of each grid (declared, smaller or larger, square or not), a few extra keys
  the schema does not name (numbers folded into the hashed slots, or strings), and how fast its
  values move;
- numbers random-walk over the field's whole range (reflected at its ends, now and then a jump
  to anywhere, a few values beyond the range, which extraction clips); integers half the time;
- categories keep their value for a while and then switch to any declared value or, one time in
  `len(values) + 1`, to a value the schema does not know ("other");
- grids are windows onto an agent's own map of blobs (cell codes across the declared range, or
  magnitudes when the field pools by mean) at an agent-specific density; the window moves with
  the agent and now and then a cell changes. Real perception grids have such structure; noise
  grids would measure nothing a model could learn.

Everything comes from one seeded numpy generator: a seed gives the same states every time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .features import FeatureSchema, GridField

PRESENT = 0.85
"""Probability that an agent sends a given declared field at all."""

JUMP = 0.02
"""Probability per step that a number leaves its walk for a uniform value anywhere in range."""

EXTRA_KEYS = ("temperature", "score", "speed", "hunger", "mood", "fuel", "ammo", "altitude")
"""Names of numeric keys a schema usually does not declare, for the hashed slots."""

TEXT_KEYS = ("note", "goal", "last_message")
"""Names of string keys: ignored by extraction, present because real states carry them."""


@dataclass
class _Agent:
    """One sampled agent's profile and current values."""

    agent_id: str
    present: dict[str, bool]
    numbers: dict[str, float]  # normalized position in [0, 1] of each declared numeric field
    integers: dict[str, bool]
    step_size: float  # normalized random-walk step
    categories: dict[str, str]
    switch: float  # probability per step that a category changes
    grids: dict[str, _GridWorld]
    extras: dict[str, float]
    texts: dict[str, str]


def sample_states(
    schema: FeatureSchema, num_states: int, num_agents: int = 50, seed: int = 0
) -> list[dict[str, Any]]:
    """`num_states` states of `num_agents` sampled agents, round-robin, in time order.

    Each state carries its `agent_id`; state i belongs to agent `i % num_agents`.

    Raises:
        ConfigError: a negative count or fewer than one agent.
    """
    if num_states < 0 or num_agents < 1:
        raise ConfigError(f"num_states={num_states}, num_agents={num_agents}: need >= 0 and >= 1")
    rng = np.random.default_rng(seed)
    agents = [_new_agent(schema, rng, f"sampled-{i:04d}") for i in range(num_agents)]
    states: list[dict[str, Any]] = []
    while len(states) < num_states:
        for agent in agents[: num_states - len(states)]:
            states.append(_state_of(schema, agent))
            _advance(schema, agent, rng)
    return states


def _new_agent(schema: FeatureSchema, rng: np.random.Generator, agent_id: str) -> _Agent:
    names = [
        *(f.name for f in schema.numeric),
        *(c.name for c in schema.categorical),
        *(g.name for g in schema.grids),
    ]
    extra_count = int(rng.integers(0, 4))
    density = float(rng.uniform(0.05, 0.6))
    return _Agent(
        agent_id=agent_id,
        present={name: bool(rng.random() < PRESENT) for name in names},
        numbers={f.name: float(rng.random()) for f in schema.numeric},
        integers={f.name: bool(rng.random() < 0.5) for f in schema.numeric},
        step_size=float(10 ** rng.uniform(-2.5, -0.7)),
        categories={c.name: _category(c.values, rng) for c in schema.categorical},
        switch=float(10 ** rng.uniform(-2.5, -0.5)),
        grids={g.name: _new_world(g, density, rng) for g in schema.grids},
        extras={
            str(key): float(rng.normal(0.0, 10 ** rng.uniform(-1, 2)))
            for key in rng.choice(EXTRA_KEYS, size=extra_count, replace=False)
        },
        texts={str(key): f"{key}-{int(rng.integers(100))}" for key in TEXT_KEYS[:extra_count]},
    )


def _category(values: Sequence[str], rng: np.random.Generator) -> str:
    """A declared value, or one time in len(values) + 1 a value the schema does not know."""
    pick = int(rng.integers(len(values) + 1))
    return values[pick] if pick < len(values) else f"unknown-{int(rng.integers(1000))}"


@dataclass
class _GridWorld:
    """An agent's private map, larger than its view and wrapping at the edges, and where it is."""

    cells: np.ndarray  # (R, C) floats in the grid's range
    view: tuple[int, int]  # the grid the agent sends: (rows, cols)
    row: int = 0
    col: int = 0

    def window(self) -> np.ndarray:
        """(rows, cols): what the agent sees from where it is."""
        rows = (self.row + np.arange(self.view[0])) % self.cells.shape[0]
        cols = (self.col + np.arange(self.view[1])) % self.cells.shape[1]
        return self.cells[np.ix_(rows, cols)]


def _new_world(g: GridField, density: float, rng: np.random.Generator) -> _GridWorld:
    """A map of blobs (`density` of it filled) and a view of an assorted shape around g's."""
    rows, cols = g.shape
    if rng.random() < 0.4:
        view = (rows, cols)
    else:
        scale = rng.uniform(0.5, 1.6, size=2)
        view = (max(1, round(rows * scale[0])), max(1, round(cols * scale[1])))
        if rng.random() < 0.5:
            view = (view[0], view[0])
    shape = (4 * view[0] + 8, 4 * view[1] + 8)
    filled = _smooth_noise(shape, rng) > 1.0 - density
    kind = _smooth_noise(shape, rng)  # which code (or magnitude) a blob holds
    if g.pool == "max":
        low, high = math.floor(g.min), math.floor(g.max)
        codes = low + 1 + np.minimum((kind * (high - low)).astype(int), high - low - 1)
        cells = np.where(filled, codes, low).astype(np.float64)
    else:
        cells = np.where(filled, g.min + kind * (g.max - g.min), g.min)
    return _GridWorld(cells, view, int(rng.integers(shape[0])), int(rng.integers(shape[1])))


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uniform noise blurred into blobs a few cells wide, ranked back onto [0, 1)."""
    field = rng.random(shape)
    for _ in range(3):  # a 3x3 box blur, wrapping like the map
        shifted = [np.roll(field, (dr, dc), axis=(0, 1)) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        field = np.sum(shifted, axis=0)
    ranks = np.argsort(np.argsort(field, axis=None)).reshape(shape)
    return ranks / ranks.size


def _advance(schema: FeatureSchema, agent: _Agent, rng: np.random.Generator) -> None:
    """One step of the agent: numbers walk, categories may switch, a few grid cells change."""
    for name, value in agent.numbers.items():
        if rng.random() < JUMP:
            agent.numbers[name] = float(rng.random())
            continue
        moved = value + rng.normal(0.0, agent.step_size)
        agent.numbers[name] = float(abs(moved) if moved < 0 else 2 - moved if moved > 1 else moved)
    for c in schema.categorical:
        if rng.random() < agent.switch:
            agent.categories[c.name] = _category(c.values, rng)
    for g in schema.grids:
        world = agent.grids[g.name]
        if rng.random() < min(1.0, 20 * agent.step_size):  # the agent moves a cell
            step = int(rng.choice((-1, 1)))
            if rng.random() < 0.5:
                world.row += step
            else:
                world.col += step
        # Now and then a cell of the view changes: things appear and go.
        rows, cols = world.view
        if rng.random() < 0.3:
            r = (world.row + int(rng.integers(rows))) % world.cells.shape[0]
            c = (world.col + int(rng.integers(cols))) % world.cells.shape[1]
            world.cells[r, c] = world.cells[r - 1, c - 1]
    for key in agent.extras:
        agent.extras[key] += float(rng.normal(0.0, agent.step_size * 10))


def _state_of(schema: FeatureSchema, agent: _Agent) -> dict[str, Any]:
    state: dict[str, Any] = {"agent_id": agent.agent_id}
    for f in schema.numeric:
        if agent.present[f.name]:
            # 5% beyond the range on either side: extraction clips, users send such values.
            value = f.min + (agent.numbers[f.name] * 1.1 - 0.05) * (f.max - f.min)
            state[f.name] = round(value) if agent.integers[f.name] else round(value, 3)
    for c in schema.categorical:
        if agent.present[c.name]:
            state[c.name] = agent.categories[c.name]
    for g in schema.grids:
        if agent.present[g.name]:
            grid = agent.grids[g.name].window()
            state[g.name] = grid.astype(int).tolist() if g.pool == "max" else grid.tolist()
    state.update({key: round(value, 3) for key, value in agent.extras.items()})
    state.update(agent.texts)
    return state
