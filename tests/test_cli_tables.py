"""The CLI's row builders: what the commands print, built from data without Redis."""

from __future__ import annotations

from memory_tiers.cli.tables import (
    agent_rows,
    duration,
    iso_time,
    model_rows,
    state_summary,
    table,
)


def test_a_table_aligns_numeric_columns_right_and_the_rest_left() -> None:
    text = table(("name", "n"), [("a", "1"), ("bbb", "100")], numeric={1})
    assert text.splitlines() == ["name    n", "a       1", "bbb   100"]


def test_a_state_summary_names_what_tells_memories_apart() -> None:
    state = {"agent_type": "explorer", "status": "idle", "current_action": "move", "health": 72.6}
    assert state_summary(state) == "explorer/idle/move/health=73"
    assert state_summary({"health": True, "status": 3}) == "-"


def test_times_read_as_iso_utc_and_out_of_range_ones_as_numbers() -> None:
    assert iso_time(1_732_600_000_123) == "2024-11-26T05:46:40.123Z"
    assert iso_time(10**20) == str(10**20)


def test_durations_keep_their_two_largest_units() -> None:
    assert [duration(s) for s in (-5, 12, 250, 7500, 3 * 86_400 + 4 * 3600)] == [
        "0s", "12s", "4m10s", "2h05m", "3d04h",
    ]  # fmt: skip


def test_models_with_most_memories_come_first_and_served_ones_say_so() -> None:
    versions = {"stm": {"old": 1, "new": 5}, "im": {"old": 2}, "ltm": {}}
    assert model_rows(versions, served={"new"}) == [
        ("new", "5", "0", "0", "yes"),
        ("old", "1", "2", "0", ""),
    ]


def test_agent_rows_count_each_tier_and_the_total() -> None:
    assert agent_rows([("a", {"stm": 3, "im": 2, "ltm": 1})]) == [("a", "3", "2", "1", "6")]
