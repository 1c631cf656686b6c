"""Training: the weighted loss, the split, early stopping, and checkpoints that load safely."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_tiers.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from memory_tiers.errors import ModelError
from memory_tiers.features import default_schema
from memory_tiers.sampling import sample_states
from memory_tiers.sim import simulate_states
from memory_tiers.train import (
    LOSS_WEIGHTS,
    distance_stress,
    pairwise_distances,
    split_data,
    train_autoencoder_pipeline,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    """5k simulated states, 3 epochs on the CPU, saved once for the module."""
    _, checkpoint = train_autoencoder_pipeline(
        simulate_states(5000, seed=3), epochs=3, batch_size=64, progress=False, device="cpu"
    )
    return checkpoint, save_checkpoint(checkpoint, tmp_path_factory.mktemp("m") / "ae.pt")


def test_five_thousand_states_three_epochs_learn(trained: tuple[Checkpoint, Path]) -> None:
    checkpoint, _ = trained
    metrics = checkpoint.metrics
    assert (metrics["train_samples"], metrics["val_samples"]) == (4000, 1000)
    assert metrics["epochs_run"] == 3 and len(metrics["val_loss"]) == 3
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    # The kept model is the best epoch's on the full objective: reconstruction plus λ x stress.
    val = metrics["val_mse"]
    assert val["loss"] == pytest.approx(min(metrics["val_loss"]), rel=1e-5)
    weight = metrics["config"]["distance_weight"]
    assert weight == 0.1
    full = sum(
        w * (val[t] + weight * val[f"{t}_stress"])
        for w, t in zip(LOSS_WEIGHTS, ("stm", "im", "ltm"), strict=True)
    )
    assert val["loss"] == pytest.approx(full, rel=1e-5)
    assert all(0.0 <= val[f"{t}_stress"] < 0.2 for t in ("stm", "im", "ltm"))
    # Every tier reconstructs far better than predicting 0.5 everywhere would.
    features = default_schema().extract_batch(simulate_states(5000, seed=3))[4000:]
    baseline = float(((features - 0.5) ** 2).mean())
    assert max(metrics["val_mse"][t] for t in ("stm", "im", "ltm")) < baseline / 2


def test_checkpoint_round_trips_with_weights_only(trained: tuple[Checkpoint, Path]) -> None:
    checkpoint, path = trained
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == checkpoint.version
    loaded = load_checkpoint(path, expect_schema=default_schema(), expect_dims=(384, 128, 32))
    assert loaded.version == checkpoint.version
    assert loaded.schema == checkpoint.schema
    assert loaded.config == checkpoint.config
    assert loaded.metrics["val_mse"] == checkpoint.metrics["val_mse"]
    x = torch.rand(8, checkpoint.schema.input_dim)
    for a, b in zip(loaded.model.encode_all(x), checkpoint.model.encode_all(x), strict=True):
        torch.testing.assert_close(a, b)


def test_load_refuses_other_schema_or_dims(trained: tuple[Checkpoint, Path]) -> None:
    _, path = trained
    other = dataclasses.replace(default_schema(), hashed_slots=4)
    with pytest.raises(ModelError, match="feature schema"):
        load_checkpoint(path, expect_schema=other)
    with pytest.raises(ModelError, match=r"\(384, 128, 32\), expected \(384, 128, 16\)"):
        load_checkpoint(path, expect_dims=(384, 128, 16))


def test_load_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="not a memory_tiers checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match=r"junk\.pt is not a PyTorch checkpoint file"):
        load_checkpoint(tmp_path / "junk.pt")


def test_training_is_seeded() -> None:
    states = simulate_states(600, seed=5)
    versions = {
        train_autoencoder_pipeline(states, epochs=1, progress=False, device="cpu")[1].version
        for _ in range(2)
    }
    assert len(versions) == 1


def test_early_stop_when_validation_stops_improving() -> None:
    # lr 0: the weights never change, so validation never improves after epoch 1.
    _, checkpoint = train_autoencoder_pipeline(
        simulate_states(500), epochs=20, patience=2, learning_rate=0.0, progress=False
    )
    assert checkpoint.metrics["epochs_run"] == 3
    assert checkpoint.metrics["best_epoch"] == 1


def test_stress_ignores_scale_and_sees_scrambled_distances() -> None:
    x = torch.rand(64, 20, generator=torch.Generator().manual_seed(0))
    d_x = pairwise_distances(x)
    assert torch.allclose(d_x, torch.pdist(x), atol=1e-5)
    assert distance_stress(3.0 * x, d_x).item() == pytest.approx(0.0, abs=1e-5)
    rotated = x @ torch.linalg.qr(torch.randn(20, 20))[0]  # same distances, other axes
    assert distance_stress(rotated, d_x).item() == pytest.approx(0.0, abs=1e-5)
    scrambled = x[torch.randperm(64)]
    assert distance_stress(scrambled, d_x).item() > 0.02


def test_stress_has_finite_gradients_with_equal_rows() -> None:
    x = torch.rand(8, 5).repeat(2, 1)  # every row twice: distance 0 pairs
    z = torch.rand(16, 3, requires_grad=True)
    distance_stress(z, pairwise_distances(x)).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    same = x.clone().requires_grad_(True)
    distance_stress(same, pairwise_distances(x)).backward()
    assert same.grad is not None and torch.isfinite(same.grad).all()


def test_the_distance_term_keeps_neighbourhoods() -> None:
    states = simulate_states(1500, seed=4)
    stress = {
        weight: train_autoencoder_pipeline(
            states, epochs=2, progress=False, device="cpu", distance_weight=weight
        )[1].metrics["val_mse"]["ltm_stress"]
        for weight in (0.0, 1.0)
    }
    assert stress[1.0] < stress[0.0] / 2


def test_fine_tuning_revives_an_output_the_first_model_saturated() -> None:
    # A model that never saw a feature used drives its output's logit far negative, where no
    # gradient flows (the default model did this to every "other" slot). Fine-tuning on data
    # that uses the feature must learn it all the same.
    schema = default_schema()
    states = sample_states(schema, 3000, num_agents=15, seed=2)
    _, first = train_autoencoder_pipeline(states, epochs=1, progress=False, device="cpu")
    column = schema.slot_names().index("status[<other>]")
    with torch.no_grad():
        output = first.model.decoder[-2]
        output.weight[column] = 0.0
        output.bias[column] = -30.0  # sigmoid' = 1e-13: stuck
    _, tuned = train_autoencoder_pipeline(
        states, epochs=4, start_from=first, progress=False, device="cpu"
    )
    x = torch.as_tensor(schema.extract_batch(states))
    other = x[:, column] == 1.0
    assert other.sum() > 300
    with torch.no_grad():
        reconstructed = tuned.model.decode_from_stm(tuned.model.encode_stm(x))[:, column]
    assert reconstructed[other].mean() > 0.5 > reconstructed[~other].mean()


def test_split_keeps_time_order() -> None:
    data = np.arange(10).reshape(10, 1)
    train, val = split_data(data, 0.2)
    assert train[:, 0].tolist() == list(range(8)) and val[:, 0].tolist() == [8, 9]
    with pytest.raises(ValueError, match="cannot be split"):
        split_data(data[:1], 0.2)


class _Payload:
    """What a hostile model file would pickle: code that runs when it is unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickled code ran",))


def test_a_model_file_with_pickled_code_is_refused_unrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hostile.pt"
    torch.save({"format": 1, "state_dict": _Payload()}, path)
    with pytest.raises(ModelError, match=r"hostile\.pt holds Python objects besides tensors"):
        load_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out
