"""The demo end to end, shortened: every entry ends in a tier or the dead letters, health ok."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from memory_tiers import Settings
from memory_tiers.demo import BAD_ENTRIES, run_demo
from memory_tiers.settings import packaged_model

DEFAULT_MODEL = Path(__file__).parent.parent / "models" / "state_autoencoder.pt"


def test_a_short_demo_stores_everything_reports_health_and_recalls() -> None:
    lines: list[str] = []
    run_demo(Settings(model_path=str(DEFAULT_MODEL)), 4.0, lines.append)
    output = "\n".join(lines)

    final = next(line for line in lines if line.startswith("final"))
    numbers = dict(re.findall(r"(sent|stored|dead)\s+([\d,]+)", final))
    sent, stored, dead = (int(numbers[k].replace(",", "")) for k in ("sent", "stored", "dead"))
    assert stored + dead == sent > 1_000
    assert dead == len(BAD_ENTRIES)
    assert "memory-tiers check: ok: 1 live daemon(s) (demo); lag 0 (max 10000), pending 0" in lines
    assert output.count("  rank  tier  feature dist") == 2
    assert f"dead letters ({len(BAD_ENTRIES)}), each with its reason" in output
    assert lines[-1] == "demo done: Redis stopped and its data removed"


def test_the_default_model_ships_in_the_package() -> None:
    settings = Settings()
    assert settings.model_path is None
    assert settings.model_file == packaged_model()
    assert packaged_model().read_bytes() == DEFAULT_MODEL.read_bytes()
    assert Settings(model_path="elsewhere.pt").model_file == Path("elsewhere.pt")


def test_demo_runs_from_an_empty_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
    result = subprocess.run(
        [sys.executable, "-m", "memory_tiers", "demo", "--seconds", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "demo done: Redis stopped and its data removed"
    assert list(tmp_path.iterdir()) == []
