"""A fast subset of bench/chaos.py: the same scenarios and invariant checks, small."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import chaos


@pytest.mark.parametrize(
    ("scenario", "options"),
    [
        ("fuzz", ["--fuzz", "300"]),
        ("kill-ingest", ["--states", "3000", "--kills", "2"]),
        ("drop-index", ["--states", "1000"]),
    ],
)
def test_a_chaos_scenario_keeps_every_invariant(scenario: str, options: list[str]) -> None:
    (result,) = chaos.run(chaos.parse_args(["--scenarios", scenario, *options]))
    assert result.check.problems == [], result.check.line()
    assert result.check.lost == result.check.duplicated == 0
    if scenario == "fuzz":
        assert result.figures["dead-lettered %"] == 100.0
        assert result.figures["same pid"] is True
    if scenario == "drop-index":
        assert result.figures["checks unhealthy"] >= 1
        assert result.figures["index back after s"] is not None
