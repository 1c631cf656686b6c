"""Built-in agent simulation on a 2-D grid world: realistic states for demo, training, benchmarks.

Agents of four types live in colonies on a square world of `-500..500` units cut into cells.
Harvesters gather resources and carry them home, explorers roam far, defenders guard their
colony and fight agents of other colonies, builders spend the colony's resources on building.
Energy, health and resources follow from what each agent does; each tick every agent sees the
11x11 cells around it. Everything is vectorized over agents with numpy and driven by one seeded
generator, so a seed gives the same state sequence every time.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from .errors import ConfigError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Grid = npt.NDArray[np.int8]

AGENT_TYPES = ("harvester", "explorer", "defender", "builder")
"""Agent types, in the order of their codes; agent i has type i % 4."""
STATUSES = ("idle", "active", "sleeping", "engaged")
"""Agent statuses, in the order of their codes."""
ACTIONS = ("move", "gather", "attack", "defend", "build", "rest", "none")
"""Actions, in the order of their codes."""

HARVESTER, EXPLORER, DEFENDER, BUILDER = range(4)
IDLE, ACTIVE, SLEEPING, ENGAGED = range(4)
MOVE, GATHER, ATTACK, DEFEND, BUILD, REST, NONE = range(7)

EMPTY, RESOURCE, AGENT, OBSTACLE = 0, 1, 2, 3
"""Perception cell values; cells outside the world read as OBSTACLE."""

PERCEPTION_SIZE = 11
"""Side of the square perception window, centred on the agent's own cell."""
RADIUS = PERCEPTION_SIZE // 2

WORLD_MIN, WORLD_MAX = -500.0, 500.0
"""Bounds of x_position and y_position, in world units."""

STATE_KEYS = (
    "agent_id",
    "agent_type",
    "status",
    "current_action",
    "health",
    "energy",
    "resources",
    "x_position",
    "y_position",
    "perception",
)
"""Keys of every state dict, in order."""

MAX_HEALTH = 100.0
MAX_ENERGY = 100.0
MAX_RESOURCES = 1000

# Per agent type, indexed by type code: movement speed (units/tick) and heading noise (radians).
_SPEED = np.array([5.0, 14.0, 7.0, 4.0])
_TURN_SD = np.array([0.5, 0.15, 0.6, 0.5])
_GATHER_YIELD = np.array([10.0, 4.0, 0.0, 5.0])
# Moving costs energy in proportion to speed.
_MOVE_COST = 0.3 + 0.08 * _SPEED
# Energy change per tick by action code; MOVE's entry is replaced by the per-type move cost.
_ENERGY_DELTA = np.array([0.0, -0.4, -2.0, -0.8, -1.2, 3.0, 0.5])
_STATUS_OF_ACTION = np.array([ACTIVE, ACTIVE, ENGAGED, ENGAGED, ACTIVE, IDLE, IDLE])

_BUILD_COST = 10
_WITHDRAW = 50
_EAT = 1
_EAT_ENERGY = 2.0
_SLEEP_ENERGY = 4.0
_SLEEP_HEAL = 1.0
_HEAL = 0.2
_REST_BELOW, _REST_UNTIL, _REST_START_P = 30.0, 65.0, 0.05
_SLEEP_BELOW_ENERGY, _SLEEP_BELOW_HEALTH = 8.0, 15.0
_WAKE_ENERGY, _WAKE_HEALTH = 80.0, 40.0
_PATROL = 12.0
"""Defenders wander up to this many cells from home."""
_RESOURCE_VISIBLE = 5.0
"""A resource cell shows (and can be gathered) once it holds at least this much."""

_OFFSETS = np.arange(PERCEPTION_SIZE) - RADIUS
_WIN_DY = np.repeat(_OFFSETS, PERCEPTION_SIZE)  # (121,) row offset of each window cell
_WIN_DX = np.tile(_OFFSETS, PERCEPTION_SIZE)  # (121,) column offset of each window cell
_WIN_DIST = np.hypot(_WIN_DY, _WIN_DX).astype(np.float64)
_CENTRE = PERCEPTION_SIZE * PERCEPTION_SIZE // 2
"""Index of the agent's own cell in a flattened window."""


def _bound(values: FloatArray, low: float, high: float) -> FloatArray:
    """Values clipped to low..high (np.clip costs several times more on small arrays)."""
    return np.minimum(np.maximum(values, low), high)


class AgentState(TypedDict):
    """One agent's state at one tick, as XADDed to the stream and fed to the autoencoder."""

    agent_id: str
    agent_type: str
    status: str
    current_action: str
    health: float
    energy: float
    resources: int
    x_position: float
    y_position: float
    perception: list[list[int]]


@dataclass(frozen=True)
class WorldConfig:
    """Shape of the world: cell size, densities, regrowth and colony size."""

    cell_size: float = 10.0
    """World units per cell: 10 gives a 100x100 grid over -500..500."""
    resource_density: float = 0.08
    """Rough share of cells that grow resources, in clustered patches."""
    obstacle_density: float = 0.03
    """Share of cells that are static obstacles."""
    resource_capacity: float = 40.0
    """Most a resource cell holds."""
    regrow_rate: float = 0.25
    """Units a resource cell regrows per tick."""
    agents_per_colony: int = 12
    """Agents sharing one home; agents of other colonies are hostile to defenders."""

    def __post_init__(self) -> None:
        if not 1.0 <= self.cell_size <= 100.0:
            raise ConfigError(f"cell_size={self.cell_size!r}: must be within 1..100 units")
        for name in ("resource_density", "obstacle_density"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise ConfigError(f"{name}={value!r}: must be within 0..0.5")
        if self.resource_capacity < _RESOURCE_VISIBLE or self.regrow_rate < 0:
            raise ConfigError(
                f"resource_capacity={self.resource_capacity!r} must be >= {_RESOURCE_VISIBLE} "
                f"and regrow_rate={self.regrow_rate!r} >= 0"
            )
        if self.agents_per_colony < 1:
            raise ConfigError(f"agents_per_colony={self.agents_per_colony!r}: must be >= 1")

    @property
    def cells(self) -> int:
        """Cells along each side of the world."""
        return math.ceil((WORLD_MAX - WORLD_MIN) / self.cell_size)


@dataclass(frozen=True)
class _Context:
    """What every agent senses at the start of a tick, as arrays over agents."""

    res_visible: BoolArray
    res_adjacent: BoolArray
    res_heading: FloatArray
    res_row: IntArray
    res_col: IntArray
    home_dist: FloatArray
    home_heading: FloatArray
    hostile_dist: FloatArray
    hostile_idx: IntArray
    hostile_heading: FloatArray
    wander: FloatArray
    u: FloatArray


@dataclass(frozen=True)
class _Snapshot:
    """Plain-Python copies of the current tick's arrays, built once for all state dicts."""

    status: list[int]
    action: list[int]
    health: list[float]
    energy: list[float]
    resources: list[int]
    x: list[float]
    y: list[float]


class Agent:
    """A handle on one simulated agent; its state lives in the Simulation's arrays."""

    __slots__ = ("_sim", "agent_id", "agent_type", "index")

    def __init__(self, sim: Simulation, index: int) -> None:
        self._sim = sim
        self.index = index
        self.agent_id = f"agent-{index:03d}"
        self.agent_type = AGENT_TYPES[index % len(AGENT_TYPES)]

    def get_state_data(self) -> AgentState:
        """This agent's state at the current tick, in plain JSON-serialisable Python types."""
        return self._sim.state_of(self.index)

    def __repr__(self) -> str:
        return f"Agent({self.agent_id!r}, {self.agent_type!r})"


class Simulation:
    """Agents of four types in colonies on a grid world, advanced one tick at a time."""

    def __init__(
        self, num_agents: int = 50, seed: int = 0, config: WorldConfig | None = None
    ) -> None:
        if num_agents < 1:
            raise ConfigError(f"num_agents={num_agents!r}: need at least one agent")
        self.config = config or WorldConfig()
        self.num_agents = num_agents
        self.seed = seed
        self.step_count = 0
        self._rng = np.random.default_rng(seed)
        self._init_world()
        self._init_agents()
        self.agents = [Agent(self, i) for i in range(num_agents)]
        self._snap: _Snapshot | None = None
        self._refresh()
        logger.debug(
            "simulation seed=%d agents=%d colonies=%d cells=%d",
            seed,
            num_agents,
            len(self._homes),
            self.config.cells,
        )

    # ----- world and agents at tick 0 -------------------------------------------------------

    def _init_world(self) -> None:
        """Lay out resource patches, obstacles and colony homes (cleared of obstacles)."""
        n = self.config.cells
        fertile = self._fertile_mask(n)
        obstacles = (self._rng.random((n, n)) < self.config.obstacle_density) & ~fertile
        colonies = math.ceil(self.num_agents / self.config.agents_per_colony)
        self._homes = self._home_cells(n, colonies)
        for row, col in self._homes:
            obstacles[max(row - 3, 0) : row + 4, max(col - 3, 0) : col + 4] = False
        cap = self.config.resource_capacity
        self._amount = np.where(fertile, self._rng.uniform(cap / 2, cap, (n, n)), 0.0)
        self._fertile_rows, self._fertile_cols = np.nonzero(fertile)
        # Padded by RADIUS obstacle cells so every window slice stays inside the array.
        self._padded: Grid = np.full((n + 2 * RADIUS, n + 2 * RADIUS), OBSTACLE, dtype=np.int8)
        self._world = self._padded[RADIUS:-RADIUS, RADIUS:-RADIUS]  # (n, n) view
        self._world[:] = np.where(obstacles, OBSTACLE, EMPTY)
        self._world[fertile] = np.where(self._amount[fertile] >= _RESOURCE_VISIBLE, RESOURCE, EMPTY)
        self._occupancy = np.zeros(self._padded.size, dtype=np.int16)  # flat, like _padded
        width = n + 2 * RADIUS
        # Flat offsets of the 121 window cells from the window's top-left corner in _padded.
        self._win_offsets = (_WIN_DY + RADIUS) * width + (_WIN_DX + RADIUS)
        self._width = width
        self._store = np.zeros(colonies, dtype=np.int64)

    def _fertile_mask(self, n: int) -> BoolArray:
        """Cells that grow resources: gaussian patches of about 30 cells each."""
        mask = np.zeros((n, n), dtype=bool)
        patches = round(n * n * self.config.resource_density / 30)
        if patches == 0:
            return mask
        centres = self._rng.uniform(0, n, size=(patches, 1, 2))
        spread = np.clip(centres + self._rng.normal(0, 2.5, (patches, 40, 2)), 0, n - 1)
        cells = spread.astype(np.int64).reshape(-1, 2)
        mask[cells[:, 0], cells[:, 1]] = True
        return mask

    def _home_cells(self, n: int, colonies: int) -> IntArray:
        """Colony homes in distinct slots of a jittered lattice, so colonies keep apart."""
        side = math.ceil(math.sqrt(colonies))
        slot = n / side
        slots = self._rng.permutation(side * side)[:colonies]
        lattice = np.stack([slots // side, slots % side], axis=1)  # (colonies, 2) row, col
        jitter = self._rng.uniform(-slot / 4, slot / 4, size=(colonies, 2))
        return np.clip((lattice + 0.5) * slot + jitter, 0, n - 1).astype(np.int64)

    def _init_agents(self) -> None:
        """Give every agent its type, colony, starting position, vitals and pack."""
        n, rng, cell = self.num_agents, self._rng, self.config.cell_size
        self._type = np.arange(n, dtype=np.int64) % len(AGENT_TYPES)
        self._colony = np.arange(n, dtype=np.int64) // self.config.agents_per_colony
        home_xy = self._cell_centre(self._homes[self._colony])
        self._home_x, self._home_y = home_xy[:, 1], home_xy[:, 0]
        self._x = np.clip(self._home_x + rng.normal(0, 2 * cell, n), WORLD_MIN, WORLD_MAX)
        self._y = np.clip(self._home_y + rng.normal(0, 2 * cell, n), WORLD_MIN, WORLD_MAX)
        blocked = self._world[self._cell(self._y), self._cell(self._x)] == OBSTACLE
        self._x[blocked], self._y[blocked] = self._home_x[blocked], self._home_y[blocked]
        self._heading = rng.uniform(-np.pi, np.pi, n)
        self._health = rng.uniform(70, 100, n)
        self._energy = rng.uniform(50, 100, n)
        self._resources = rng.integers(0, 50, n) + 50 * (self._type == BUILDER)
        self._capacity = rng.integers(300, 800, n)
        self._action = np.full(n, NONE, dtype=np.int64)
        self._status = np.full(n, IDLE, dtype=np.int64)
        self._resting = np.zeros(n, dtype=bool)
        self._sleeping = np.zeros(n, dtype=bool)
        self._defenders = np.flatnonzero(self._type == DEFENDER)

    def _cell(self, coord: FloatArray) -> IntArray:
        """Cell index along one axis of world coordinates."""
        idx = np.floor((coord - WORLD_MIN) / self.config.cell_size).astype(np.int64)
        return np.minimum(np.maximum(idx, 0), self.config.cells - 1)

    def _cell_centre(self, cells: IntArray) -> FloatArray:
        """World coordinates of the centres of (row, col) cells."""
        centre = WORLD_MIN + (cells + 0.5) * self.config.cell_size
        return np.asarray(np.minimum(centre, WORLD_MAX), dtype=np.float64)

    # ----- perception and states ------------------------------------------------------------

    def _refresh(self) -> None:
        """Recompute every agent's cell and 11x11 window after positions or the world changed."""
        self._row, self._col = self._cell(self._y), self._cell(self._x)
        corner = self._row * self._width + self._col  # window top-left, flat in _padded
        cells = corner[:, None] + self._win_offsets  # (N, 121)
        self._world_view = self._padded.ravel()[cells]  # (N, 121) resources and obstacles
        own = corner + self._win_offsets[_CENTRE]  # the agent's own cell
        np.add.at(self._occupancy, own, 1)
        others = self._occupancy[cells]  # (N, 121) agent counts, self included
        self._occupancy[own] = 0
        others[:, _CENTRE] -= 1
        seen = np.where(others > 0, np.int8(AGENT), self._world_view)
        self._perception = seen.reshape(-1, PERCEPTION_SIZE, PERCEPTION_SIZE)
        self._snap = None

    def _snapshot(self) -> _Snapshot:
        """This tick's arrays as Python lists, converted once and shared by all states."""
        if self._snap is None:
            self._snap = _Snapshot(
                status=self._status.tolist(),
                action=self._action.tolist(),
                health=self._health.round(2).tolist(),
                energy=self._energy.round(2).tolist(),
                resources=self._resources.tolist(),
                x=self._x.round(2).tolist(),
                y=self._y.round(2).tolist(),
            )
        return self._snap

    def state_of(self, index: int) -> AgentState:
        """The state dict of agent `index` at the current tick."""
        snap, agent = self._snapshot(), self.agents[index]
        return {
            "agent_id": agent.agent_id,
            "agent_type": agent.agent_type,
            "status": STATUSES[snap.status[index]],
            "current_action": ACTIONS[snap.action[index]],
            "health": snap.health[index],
            "energy": snap.energy[index],
            "resources": snap.resources[index],
            "x_position": snap.x[index],
            "y_position": snap.y[index],
            "perception": self._perception[index].tolist(),
        }

    def states(self) -> list[AgentState]:
        """The state dicts of all agents at the current tick."""
        return [self.state_of(i) for i in range(self.num_agents)]

    def world(self) -> Grid:
        """A copy of the world grid, (cells, cells) of EMPTY, RESOURCE, OBSTACLE; row = y cell."""
        return np.array(self._world, dtype=np.int8)

    def place_agent(self, index: int, x: float, y: float) -> None:
        """Move agent `index` to (x, y) at once, e.g. to set up a scenario; perception follows."""
        if not 0 <= index < self.num_agents:
            raise ConfigError(
                f"place_agent({index}, ...): no agent {index} among {self.num_agents}"
            )
        if not (WORLD_MIN <= x <= WORLD_MAX and WORLD_MIN <= y <= WORLD_MAX):
            raise ConfigError(f"place_agent({index}, {x}, {y}): outside {WORLD_MIN}..{WORLD_MAX}")
        self._x[index], self._y[index] = x, y
        self._refresh()

    # ----- one tick -------------------------------------------------------------------------

    def step(self) -> None:
        """Advance every agent one tick: sense, decide, act, let resources regrow."""
        ctx = self._sense()
        heading = self._decide(ctx)
        self._act(heading, ctx)
        self._regrow()
        self.step_count += 1
        self._refresh()

    def _sense(self) -> _Context:
        """Nearest visible resource, home and nearest hostile of each agent, plus random draws."""
        n, cell = self.num_agents, self.config.cell_size
        dist = np.where(self._world_view == RESOURCE, _WIN_DIST, np.inf)
        k = dist.argmin(axis=1)
        nearest = dist[np.arange(n), k]
        hostile_dist, hostile_idx = self._hostiles()
        safe_idx = np.maximum(hostile_idx, 0)
        noise = self._rng.standard_normal(n) * _TURN_SD[self._type]
        return _Context(
            res_visible=np.isfinite(nearest),
            res_adjacent=nearest < 1.5,
            res_heading=np.arctan2(_WIN_DY[k], _WIN_DX[k]).astype(np.float64),
            res_row=self._row + _WIN_DY[k],
            res_col=self._col + _WIN_DX[k],
            home_dist=np.hypot(self._home_x - self._x, self._home_y - self._y) / cell,
            home_heading=np.arctan2(self._home_y - self._y, self._home_x - self._x),
            hostile_dist=hostile_dist / cell,
            hostile_idx=hostile_idx,
            hostile_heading=np.arctan2(self._y[safe_idx] - self._y, self._x[safe_idx] - self._x),
            wander=self._heading + noise,
            u=self._rng.random((4, n)),
        )

    def _hostiles(self) -> tuple[FloatArray, IntArray]:
        """Distance (units) to, and index of, each defender's nearest awake hostile agent."""
        n, d = self.num_agents, self._defenders
        dist, idx = np.full(n, np.inf), np.full(n, -1, dtype=np.int64)
        if d.size == 0:
            return dist, idx
        pair = np.hypot(self._x[None, :] - self._x[d, None], self._y[None, :] - self._y[d, None])
        friendly = self._colony[None, :] == self._colony[d, None]
        pair[friendly | self._sleeping[None, :]] = np.inf  # (D, N)
        idx[d] = pair.argmin(axis=1)
        dist[d] = pair[np.arange(d.size), idx[d]]
        idx[~np.isfinite(dist)] = -1
        return dist, idx

    def _decide(self, ctx: _Context) -> FloatArray:
        """Set every agent's action for this tick; return the heading of those that move."""
        policies = (self._harvester, self._explorer, self._defender, self._builder)
        choices = [policy(ctx) for policy in policies]
        actions = np.stack([a for a, _ in choices])  # (4, N)
        headings = np.stack([h for _, h in choices])  # (4, N)
        agents = np.arange(self.num_agents)
        action, heading = actions[self._type, agents], headings[self._type, agents]
        self._resting |= (self._energy < _REST_BELOW) & (ctx.u[1] < _REST_START_P)
        self._resting &= self._energy < _REST_UNTIL
        action[self._resting | self._sleeping] = REST
        self._action = action
        self._status = np.where(self._sleeping, SLEEPING, _STATUS_OF_ACTION[action])
        return heading

    def _harvester(self, ctx: _Context) -> tuple[IntArray, FloatArray]:
        """Gather what is adjacent, walk to what is visible, carry a full pack home."""
        full = self._resources >= self._capacity
        at_home = ctx.home_dist <= 3
        action = np.where(ctx.res_adjacent, GATHER, MOVE)
        action[~ctx.res_visible & (ctx.u[0] < 0.1)] = NONE
        heading = np.where(ctx.res_visible, ctx.res_heading, ctx.wander)
        action[full] = np.where(at_home[full], NONE, MOVE)  # NONE at home: unloading
        heading[full] = ctx.home_heading[full]
        return action, heading

    def _explorer(self, ctx: _Context) -> tuple[IntArray, FloatArray]:
        """Roam far on a steady heading with rare sharp turns; snack on resources when poor."""
        turn = ctx.u[2] < 0.02
        heading = np.where(turn, ctx.wander + np.pi * (ctx.u[3] - 0.5) * 2, ctx.wander)
        action = np.full(self.num_agents, MOVE, dtype=np.int64)
        action[ctx.res_adjacent & (self._resources < 50) & (ctx.u[0] < 0.3)] = GATHER
        action[ctx.u[0] > 0.97] = NONE
        return action, heading

    def _defender(self, ctx: _Context) -> tuple[IntArray, FloatArray]:
        """Patrol near home; face hostiles in sight and attack them when near; retreat if hurt."""
        heading = np.where(ctx.home_dist > _PATROL, ctx.home_heading, ctx.wander)
        action = np.where((ctx.home_dist > _PATROL) | (ctx.u[0] < 0.5), MOVE, NONE)
        fit = self._health > 40
        seen = fit & (ctx.hostile_dist <= RADIUS)
        heading[seen] = ctx.hostile_heading[seen]
        action[seen] = np.where(ctx.u[0][seen] < 0.5, DEFEND, MOVE)
        near = fit & (ctx.hostile_dist <= 2)
        action[near] = np.where(ctx.u[0][near] < 0.7, ATTACK, DEFEND)
        hurt = ~fit & (ctx.hostile_dist <= RADIUS)
        heading[hurt] = ctx.home_heading[hurt]
        action[hurt] = np.where(ctx.home_dist[hurt] > 2, MOVE, DEFEND)
        return action, heading

    def _builder(self, ctx: _Context) -> tuple[IntArray, FloatArray]:
        """Build at home while resources last; restock from the colony store or nearby cells."""
        can_build = self._resources >= _BUILD_COST
        at_home = ctx.home_dist <= 4
        stocked = self._store[self._colony] >= _BUILD_COST
        roaming = ctx.home_dist > 15
        heading = np.where(roaming, ctx.home_heading, ctx.wander)
        action = np.where(at_home & (ctx.u[0] < 0.3), NONE, MOVE)
        forage = ~can_build & ctx.res_visible
        heading[forage] = ctx.res_heading[forage]
        action[~can_build & ctx.res_adjacent] = GATHER
        action[~can_build & at_home & stocked] = GATHER  # from the store
        action[can_build] = np.where(at_home[can_build], BUILD, MOVE)
        heading[can_build & ~at_home] = ctx.home_heading[can_build & ~at_home]
        return action, heading

    def _act(self, heading: FloatArray, ctx: _Context) -> None:
        """Apply this tick's actions to positions, vitals, packs and the world."""
        action = self._action
        self._move(action == MOVE, heading, ctx.u[3])
        self._gather(action == GATHER, ctx)
        self._fight(action == ATTACK, ctx)
        self._spend(action)
        self._update_vitals(action)

    def _move(self, moving: BoolArray, heading: FloatArray, jitter: FloatArray) -> None:
        """Step movers along their heading; turn away from obstacles and bounce off the edges."""
        self._heading = np.where(moving, heading, self._heading)
        speed = _SPEED[self._type] * (0.75 + 0.5 * jitter) * moving
        x = self._x + speed * np.cos(self._heading)
        y = self._y + speed * np.sin(self._heading)
        out_x, out_y = (x < WORLD_MIN) | (x > WORLD_MAX), (y < WORLD_MIN) | (y > WORLD_MAX)
        self._heading = np.where(out_x, np.pi - self._heading, self._heading)
        self._heading = np.where(out_y, -self._heading, self._heading)
        x, y = _bound(x, WORLD_MIN, WORLD_MAX), _bound(y, WORLD_MIN, WORLD_MAX)
        blocked = self._world[self._cell(y), self._cell(x)] == OBSTACLE
        self._heading[blocked] += np.pi / 2
        self._x, self._y = np.where(blocked, self._x, x), np.where(blocked, self._y, y)

    def _gather(self, gathering: BoolArray, ctx: _Context) -> None:
        """Take from the nearest adjacent resource cell (first comer per cell), or the store."""
        from_cell = np.flatnonzero(gathering & ctx.res_adjacent)
        cells = ctx.res_row[from_cell] * self.config.cells + ctx.res_col[from_cell]
        _, first = np.unique(cells, return_index=True)
        who = from_cell[first]
        rows, cols = ctx.res_row[who], ctx.res_col[who]
        room = MAX_RESOURCES - self._resources[who]
        take = np.floor(np.minimum(_GATHER_YIELD[self._type[who]], self._amount[rows, cols]))
        take = np.minimum(take, room)
        self._amount[rows, cols] -= take
        self._resources[who] += take.astype(np.int64)
        self._world[rows, cols] = np.where(self._amount[rows, cols] >= _RESOURCE_VISIBLE, 1, 0)
        for i in np.flatnonzero(gathering & ~ctx.res_adjacent).tolist():
            self._withdraw(i)

    def _withdraw(self, i: int) -> None:
        """Move up to _WITHDRAW units from agent i's colony store into its pack."""
        colony = int(self._colony[i])
        take = min(_WITHDRAW, int(self._store[colony]), MAX_RESOURCES - int(self._resources[i]))
        self._store[colony] -= take
        self._resources[i] += take

    def _fight(self, attacking: BoolArray, ctx: _Context) -> None:
        """Attackers hurt their target (half if it defends) and take some damage back."""
        attackers = np.flatnonzero(attacking & (ctx.hostile_idx >= 0))
        targets = ctx.hostile_idx[attackers]
        damage = 6.0 + 8.0 * ctx.u[2][attackers]
        damage = np.where(self._action[targets] == DEFEND, damage / 2, damage)
        np.subtract.at(self._health, targets, damage)
        self._health[attackers] -= 1.0 + 3.0 * ctx.u[3][attackers]

    def _spend(self, action: IntArray) -> None:
        """Builders pay for building, resters eat, full harvesters at home unload to the store."""
        self._resources[action == BUILD] -= _BUILD_COST
        eating = (action == REST) & (self._resources >= _EAT)
        self._resources[eating] -= _EAT
        self._energy[eating] += _EAT_ENERGY
        unloading = (self._type == HARVESTER) & (action == NONE)
        unloading &= self._resources >= self._capacity
        np.add.at(self._store, self._colony[unloading], self._resources[unloading] - 20)
        self._resources[unloading] = 20

    def _update_vitals(self, action: IntArray) -> None:
        """Energy and health follow the action; exhausted or wounded agents fall asleep."""
        delta = np.where(action == MOVE, -_MOVE_COST[self._type], _ENERGY_DELTA[action])
        delta = np.where(self._sleeping, _SLEEP_ENERGY, delta)
        self._energy = _bound(self._energy + delta, 0.0, MAX_ENERGY)
        calm = (self._energy > 40) & (action != ATTACK) & (action != DEFEND)
        heal = np.where(self._sleeping, _SLEEP_HEAL, np.where(calm, _HEAL, 0.0))
        self._health = _bound(self._health + heal, 0.0, MAX_HEALTH)
        woken = (self._energy >= _WAKE_ENERGY) & (self._health >= _WAKE_HEALTH)
        spent = (self._energy < _SLEEP_BELOW_ENERGY) | (self._health < _SLEEP_BELOW_HEALTH)
        self._sleeping = (self._sleeping & ~woken) | spent
        self._resting &= ~self._sleeping

    def _regrow(self) -> None:
        """Resource cells regrow towards capacity and show again once worth gathering."""
        rows, cols = self._fertile_rows, self._fertile_cols
        grown = np.minimum(
            self._amount[rows, cols] + self.config.regrow_rate, self.config.resource_capacity
        )
        self._amount[rows, cols] = grown
        self._world[rows, cols] = np.where(grown >= _RESOURCE_VISIBLE, RESOURCE, EMPTY)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC, which would rescan the growing pile of acyclic state dicts."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect_training_data(simulation: Simulation, num_samples: int = 10_000) -> list[AgentState]:
    """Exactly `num_samples` states: step, take every agent's state, repeat, cut at the end."""
    if num_samples < 0:
        raise ConfigError(f"num_samples={num_samples!r}: must be >= 0")
    start = time.perf_counter()
    states: list[AgentState] = []
    with _gc_paused():
        while len(states) < num_samples:
            simulation.step()
            wanted = min(num_samples - len(states), len(simulation.agents))
            states.extend(agent.get_state_data() for agent in simulation.agents[:wanted])
    logger.info(
        "collected %d states in %d steps, %.2fs",
        len(states),
        simulation.step_count,
        time.perf_counter() - start,
    )
    return states


def simulate_states(
    num_states: int, num_agents: int = 50, seed: int = 0, worlds: int = 1
) -> list[AgentState]:
    """`num_states` states of `num_agents` agents, from `worlds` fresh worlds seeded seed, seed+1...

    Each world contributes an equal share (the last one the remainder), world after world, so
    a time-ordered validation split holds states of a world the model never trained on.
    """
    if worlds < 1:
        raise ConfigError(f"worlds={worlds}: must be at least 1")
    share = num_states // worlds
    states: list[AgentState] = []
    for world in range(worlds):
        count = share if world < worlds - 1 else num_states - len(states)
        simulation = Simulation(num_agents=num_agents, seed=seed + world)
        states.extend(collect_training_data(simulation, count))
    return states
