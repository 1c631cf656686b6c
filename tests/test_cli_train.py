"""`memory-tiers train` from each data source: checkpoint, metrics JSON and loss curve."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from memory_tiers import Keys
from memory_tiers.checkpoint import load_checkpoint
from memory_tiers.cli import main
from memory_tiers.protocol import encode_entry
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_train(args: list[str], env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "train", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def assert_outputs(model: Path, states: int, kind: str) -> None:
    checkpoint = load_checkpoint(model)
    assert checkpoint.metrics["data"]["kind"] == kind
    assert checkpoint.metrics["data"]["states"] == states
    metrics = json.loads(model.with_suffix(".metrics.json").read_text())
    assert metrics["version"] == checkpoint.version
    tiers = ("stm", "im", "ltm")
    assert set(metrics["val_mse"]) == {*tiers, *(f"{t}_stress" for t in tiers), "loss"}
    assert metrics["epochs_run"] == len(metrics["val_loss"]) == 2
    assert model.with_suffix(".loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_train_on_the_simulation(tmp_path: Path) -> None:
    model = tmp_path / "sim" / "ae.pt"
    output = run_train(["--simulate", "600", "--worlds", "2", "--epochs", "2", "--out", str(model)])
    assert "held-out MSE stm=" in output and str(model) in output
    assert_outputs(model, 600, "simulation")


def test_fine_tune_with_schema_wide_states(tmp_path: Path) -> None:
    first = tmp_path / "first.pt"
    run_train(["--simulate", "300", "--epochs", "1", "--out", str(first)])
    tuned = tmp_path / "tuned.pt"
    run_train([
        "--simulate", "300", "--broad", "200", "--init", str(first), "--epochs", "2",
        "--distance-weight", "0.5", "--torch-threads", "1", "--out", str(tuned),
    ])  # fmt: skip
    assert_outputs(tuned, 300, "simulation")
    checkpoint = load_checkpoint(tuned)
    data = checkpoint.metrics["data"]
    assert (data["broad"], data["fine_tuned_from"]) == (200, load_checkpoint(first).version)
    assert "broad 200" in data["description"]
    # Each source split 80/20 on its own: 240 + 160 to train, 60 + 40 to validate.
    assert (checkpoint.metrics["train_samples"], checkpoint.metrics["val_samples"]) == (400, 100)
    assert checkpoint.metrics["config"]["distance_weight"] == 0.5


def test_train_on_a_jsonl_file(tmp_path: Path) -> None:
    data = tmp_path / "states.jsonl"
    data.write_text("\n".join(json.dumps(s) for s in simulate_states(300)) + "\n\n")
    model = tmp_path / "ae.pt"
    run_train(["--jsonl", str(data), "--epochs", "2", "--out", str(model)])
    assert_outputs(model, 300, "jsonl")


def test_train_from_the_stream(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    stream = Keys().stream
    for i, state in enumerate(simulate_states(400, seed=6)):
        redis_client.xadd(stream, encode_entry(str(state["agent_id"]), dict(state), step=i))
    redis_client.xadd(stream, {"agent_id": "bad", "state": "{oops"})  # skipped, not fatal
    redis_client.xadd(stream, encode_entry("a", {"action_type": "move"}, kind="action"))
    model = tmp_path / "ae.pt"
    run_train(
        ["--from-stream", "--epochs", "2", "--out", str(model)],
        env={"MT_REDIS_URL": redis_server.url},
    )
    assert_outputs(model, 400, "stream")


@pytest.mark.parametrize(
    "args", [[], ["--simulate", "10", "--from-stream"], ["--simulate", "10", "--jsonl", __file__]]
)
def test_train_needs_exactly_one_source(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2
    assert "exactly one of --simulate N, --jsonl FILE, --from-stream" in result.output


def test_progress_moves_per_batch_and_the_loss_plot_ticks_whole_epochs(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from memory_tiers.plots import loss_figure

    model = tmp_path / "ae.pt"
    args = ["--simulate", "500", "--epochs", "3", "--patience", "9", "--out", str(model)]
    output = run_train(args)
    assert re.search(r"training: 100%.* 21/21 \[", output), output  # 400 train states / 64: 7
    figure = loss_figure(load_checkpoint(model).metrics)
    ticks = figure.axes[0].get_xticks()
    plt.close(figure)
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_without_matplotlib_train_writes_all_but_the_plot_and_stats_plot_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra were missing
    model = tmp_path / "ae.pt"
    result = CliRunner().invoke(
        main, ["--log-level", "WARNING", "train", "--simulate", "300", "--epochs", "1",
               "--out", str(model)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no loss-curve PNG: pip install 'memory_tiers[plots]' draws it" in result.stderr
    assert f"wrote {model}, {model.with_suffix('.metrics.json')}\n" in result.stdout
    assert load_checkpoint(model).metrics["epochs_run"] == 1
    assert not model.with_suffix(".loss.png").exists()

    stats = CliRunner().invoke(
        main, ["--redis-url", redis_server.url, "stats", "--plot", str(tmp_path / "s.png")]
    )
    assert stats.exit_code == 2
    assert "stats --plot needs matplotlib: pip install 'memory_tiers[plots]'" in stats.output
