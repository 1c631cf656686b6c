"""The built-in simulation: determinism, state schema and ranges, behaviour, perception."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from memory_tiers.errors import ConfigError
from memory_tiers.sim import (
    ACTIONS,
    AGENT_TYPES,
    STATE_KEYS,
    STATUSES,
    AgentState,
    Simulation,
    WorldConfig,
    collect_training_data,
    simulate_states,
)

EMPTY_WORLD = WorldConfig(resource_density=0.0, obstacle_density=0.0)


def _run(sim: Simulation, steps: int) -> list[list[AgentState]]:
    """States of all agents after each of `steps` ticks, one list per tick."""
    ticks = []
    for _ in range(steps):
        sim.step()
        ticks.append([agent.get_state_data() for agent in sim.agents])
    return ticks


@pytest.fixture(scope="module")
def run_300() -> list[list[AgentState]]:
    """300 ticks of the default 50-agent world, shared by the behaviour tests."""
    return _run(Simulation(num_agents=50, seed=0), 300)


def test_same_seed_gives_same_states_and_other_seeds_differ() -> None:
    first = simulate_states(600, num_agents=12, seed=7)
    again = simulate_states(600, num_agents=12, seed=7)
    other = simulate_states(600, num_agents=12, seed=8)

    assert first == again
    assert first != other
    assert [s["x_position"] for s in first] != [s["x_position"] for s in other]


@pytest.mark.parametrize(("num_samples", "steps"), [(0, 0), (1, 1), (50, 1), (120, 3)])
def test_collect_returns_exactly_num_samples(num_samples: int, steps: int) -> None:
    sim = Simulation(num_agents=50, seed=1)

    states = collect_training_data(sim, num_samples)

    assert len(states) == num_samples
    assert sim.step_count == steps
    expected_ids = [f"agent-{i % 50:03d}" for i in range(num_samples)]
    assert [s["agent_id"] for s in states] == expected_ids


def test_simulate_states_length_and_agents() -> None:
    states = simulate_states(25, num_agents=10, seed=2)

    assert len(states) == 25
    assert {s["agent_id"] for s in states} == {f"agent-{i:03d}" for i in range(10)}


def test_every_state_has_the_schema_and_values_in_range() -> None:
    states = simulate_states(4000, num_agents=40, seed=3)

    for state in states:
        assert tuple(state) == STATE_KEYS
        assert state["agent_type"] in AGENT_TYPES
        assert state["status"] in STATUSES
        assert state["current_action"] in ACTIONS
        for key in ("health", "energy", "x_position", "y_position"):
            assert type(state[key]) is float, key
        assert type(state["resources"]) is int
        assert 0.0 <= state["health"] <= 100.0
        assert 0.0 <= state["energy"] <= 100.0
        assert 0 <= state["resources"] <= 1000
        assert -500.0 <= state["x_position"] <= 500.0
        assert -500.0 <= state["y_position"] <= 500.0
        grid = state["perception"]
        assert type(grid) is list and len(grid) == 11
        for row in grid:
            assert type(row) is list and len(row) == 11
            assert all(type(v) is int and 0 <= v <= 3 for v in row)


def test_states_survive_a_json_round_trip() -> None:
    states = simulate_states(200, num_agents=20, seed=4)

    assert json.loads(json.dumps(states)) == states


def test_agent_ids_and_types() -> None:
    sim = Simulation(num_agents=9, seed=0)

    assert [a.agent_id for a in sim.agents][:3] == ["agent-000", "agent-001", "agent-002"]
    assert [a.agent_type for a in sim.agents][:5] == [*AGENT_TYPES, "harvester"]
    assert sim.agents[7].get_state_data()["agent_type"] == "builder"


def test_positions_change_and_energy_falls_and_rises(run_300: list[list[AgentState]]) -> None:
    start, end = run_300[0], run_300[-1]
    moved = sum(
        (a["x_position"], a["y_position"]) != (b["x_position"], b["y_position"])
        for a, b in zip(start, end, strict=True)
    )
    energy = np.array([[s["energy"] for s in tick] for tick in run_300])  # (steps, agents)
    change = np.diff(energy, axis=0)

    assert moved >= 45
    assert (change < 0).sum() > 1000
    assert (change > 0).sum() > 1000
    assert ((change < 0).any(axis=0) & (change > 0).any(axis=0)).sum() >= 45


def test_harvesters_gain_more_resources_than_other_types(
    run_300: list[list[AgentState]],
) -> None:
    growth: dict[str, list[int]] = defaultdict(list)
    level: dict[str, list[float]] = defaultdict(list)
    for i, first in enumerate(run_300[0]):
        held = [tick[i]["resources"] for tick in run_300]
        growth[first["agent_type"]].append(held[-1] - held[0])
        level[first["agent_type"]].append(float(np.mean(held)))
    mean_growth = {t: float(np.mean(g)) for t, g in growth.items()}
    mean_level = {t: float(np.mean(v)) for t, v in level.items()}

    assert mean_growth["harvester"] > 100, mean_growth
    assert mean_level["harvester"] > 100, mean_level
    for other in ("explorer", "defender", "builder"):
        assert mean_growth["harvester"] > 4 * max(mean_growth[other], 1.0), mean_growth
        assert mean_level["harvester"] > 3 * mean_level[other], mean_level


def test_all_types_actions_and_statuses_appear(run_300: list[list[AgentState]]) -> None:
    states = [s for tick in run_300 for s in tick]

    assert {s["agent_type"] for s in states} == set(AGENT_TYPES)
    assert {s["current_action"] for s in states} == set(ACTIONS)
    assert {s["status"] for s in states} == set(STATUSES)


def test_actions_follow_agent_type(run_300: list[list[AgentState]]) -> None:
    by_type: dict[str, set[str]] = defaultdict(set)
    for state in (s for tick in run_300 for s in tick):
        by_type[state["agent_type"]].add(state["current_action"])

    assert "build" in by_type["builder"]
    assert "attack" in by_type["defender"] and "defend" in by_type["defender"]
    for agent_type in ("harvester", "explorer", "builder"):
        assert not {"attack", "defend"} & by_type[agent_type]
    for agent_type in ("harvester", "explorer", "defender"):
        assert "build" not in by_type[agent_type]


def test_perception_shows_an_adjacent_agent() -> None:
    sim = Simulation(num_agents=2, seed=0, config=EMPTY_WORLD)
    sim.place_agent(0, 0.0, 0.0)
    sim.place_agent(1, 10.0, 0.0)  # one 10-unit cell to the right (+x = next column)

    left, right = (np.array(a.get_state_data()["perception"]) for a in sim.agents)

    assert left[5, 6] == 2 and (left == 2).sum() == 1 and left.sum() == 2
    assert right[5, 4] == 2 and (right == 2).sum() == 1 and right.sum() == 2


def test_perception_shows_an_agent_on_the_same_cell_but_not_itself() -> None:
    sim = Simulation(num_agents=2, seed=0, config=EMPTY_WORLD)
    sim.place_agent(0, 100.0, -200.0)
    sim.place_agent(1, 400.0, 400.0)
    assert not np.array(sim.agents[0].get_state_data()["perception"]).any()

    sim.place_agent(1, 104.0, -196.0)  # same 10-unit cell as agent 0

    grid = np.array(sim.agents[0].get_state_data()["perception"])
    assert grid[5, 5] == 2 and grid.sum() == 2


@pytest.mark.parametrize(
    ("x", "y", "outside"),
    [
        (-500.0, -500.0, (slice(0, 5), slice(0, 5))),
        (500.0, 500.0, (slice(6, 11), slice(6, 11))),
    ],
)
def test_perception_pads_outside_the_world_with_obstacles(
    x: float, y: float, outside: tuple[slice, slice]
) -> None:
    sim = Simulation(num_agents=1, seed=0, config=EMPTY_WORLD)
    sim.place_agent(0, x, y)

    grid = np.array(sim.agents[0].get_state_data()["perception"])
    rows, cols = outside

    assert (grid[rows, :] == 3).all() and (grid[:, cols] == 3).all()
    inside = np.ones_like(grid, dtype=bool)
    inside[rows, :] = inside[:, cols] = False
    assert (grid[inside] == 0).all() and inside.sum() == 36


def _resource_flips(regrow_rate: float, steps: int) -> tuple[int, int, int]:
    """Cells that went resource -> empty and empty -> resource, and the harvester's haul."""
    config = WorldConfig(resource_density=0.3, obstacle_density=0.0, regrow_rate=regrow_rate)
    sim = Simulation(num_agents=1, seed=9, config=config)  # agent 0 is a harvester
    depleted = regrown = 0
    before = sim.world()
    for _ in range(steps):
        sim.step()
        after = sim.world()
        depleted += int(((before == 1) & (after == 0)).sum())
        regrown += int(((before == 0) & (after == 1)).sum())
        before = after
    return depleted, regrown, sim.agents[0].get_state_data()["resources"]


def test_resources_deplete_when_gathered_and_regrow() -> None:
    depleted, regrown, haul = _resource_flips(regrow_rate=0.25, steps=150)
    assert depleted >= 3 and regrown >= 1 and haul > 30

    depleted, regrown, haul = _resource_flips(regrow_rate=0.0, steps=150)
    assert depleted >= 3 and regrown == 0 and haul > 30


def test_world_grid_holds_only_empty_resource_and_obstacle_cells() -> None:
    grid = Simulation(num_agents=10, seed=0).world()

    assert grid.shape == (100, 100)
    assert set(np.unique(grid).tolist()) == {0, 1, 3}
    assert 0.02 < (grid == 1).mean() < 0.2 and 0.01 < (grid == 3).mean() < 0.05


@pytest.mark.parametrize(
    "make",
    [
        lambda: Simulation(num_agents=0),
        lambda: WorldConfig(cell_size=0.0),
        lambda: WorldConfig(obstacle_density=0.9),
        lambda: WorldConfig(agents_per_colony=0),
        lambda: collect_training_data(Simulation(num_agents=2), -1),
        lambda: Simulation(num_agents=2).place_agent(0, 600.0, 0.0),
        lambda: Simulation(num_agents=2).place_agent(2, 0.0, 0.0),
    ],
)
def test_bad_arguments_raise_config_error(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


def test_simulate_states_from_several_worlds() -> None:
    states = simulate_states(250, num_agents=10, seed=4, worlds=3)
    assert len(states) == 250
    assert states[:83] == simulate_states(83, num_agents=10, seed=4)
    assert states[83:166] == simulate_states(83, num_agents=10, seed=5)
    assert states[166:] == simulate_states(84, num_agents=10, seed=6)
    with pytest.raises(ConfigError, match="worlds=0"):
        simulate_states(10, worlds=0)
