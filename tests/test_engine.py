"""The embedding engine: batch encoding, tier compression, reconstruction, the default model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_tiers import EmbeddingEngine, FeatureError, ModelError, default_schema
from memory_tiers.checkpoint import load_checkpoint
from memory_tiers.engine import SMALL_BATCH
from memory_tiers.protocol import action_to_state
from memory_tiers.sim import simulate_states

DEFAULT_MODEL = Path(__file__).parent.parent / "models" / "state_autoencoder.pt"


@pytest.fixture(scope="module")
def default_engine() -> EmbeddingEngine:
    return EmbeddingEngine.from_checkpoint(DEFAULT_MODEL, expect_dims=(384, 128, 32))


def test_state_embedding_has_the_designs_three_vectors(engine: EmbeddingEngine) -> None:
    states = simulate_states(5, seed=2)
    one = engine.create_state_embedding(states[3])
    assert {k: v.shape for k, v in one.items()} == {
        "full_vector": (384,), "compressed_vector": (128,), "abstract_vector": (32,),
    }  # fmt: skip
    batch = engine.create_state_embeddings(states)
    for name, vector in one.items():
        assert batch[name].shape == (5, vector.shape[0])
        np.testing.assert_allclose(batch[name][3], vector, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 100, SMALL_BATCH, SMALL_BATCH + 1, 1000])
def test_folded_weights_give_the_models_vectors_and_reconstructions(
    default_engine: EmbeddingEngine, rows: int
) -> None:
    # A CPU engine encodes up to SMALL_BATCH rows on folded weights, more through the model's
    # modules, and decodes on folded weights at any size: all must give the model's numbers.
    features = default_engine.schema.extract_batch(simulate_states(rows, seed=rows))
    model = default_engine.model
    with torch.no_grad():
        x = torch.as_tensor(features)
        stm = model.encode_stm(x)
        expected = {"stm": stm, "im": model.stm_to_im(stm)}
        expected["ltm"] = model.im_to_ltm(expected["im"])
        decoded = {
            "stm": model.decode_from_stm(expected["stm"]),
            "im": model.decode_from_im(expected["im"]),
            "ltm": model.decode_from_ltm(expected["ltm"]),
        }
    vectors = default_engine.encode_features(features)
    for tier in ("stm", "im", "ltm"):
        np.testing.assert_allclose(vectors[tier], expected[tier].numpy(), atol=2e-5, rtol=1e-5)
    assert list(default_engine.encode_features(features, ("im",))) == ["im"]
    for tier in ("stm", "im", "ltm"):
        reconstructed = default_engine.decode(expected[tier].numpy(), tier)
        assert reconstructed.dtype == np.float32
        np.testing.assert_allclose(reconstructed, decoded[tier].numpy(), atol=2e-5)


def test_features_of_the_wrong_width_are_refused_on_either_path(engine: EmbeddingEngine) -> None:
    for rows in (1, SMALL_BATCH + 1):
        with pytest.raises(ModelError, match=r"features: expected rows of 152, got shape"):
            engine.encode_features(np.zeros((rows, 151), np.float32))


def test_compress_equals_encoding_one_tier_down(engine: EmbeddingEngine) -> None:
    vectors = engine.encode_states(simulate_states(64, seed=4))
    np.testing.assert_allclose(engine.compress(vectors["stm"], "stm"), vectors["im"], atol=1e-5)
    np.testing.assert_allclose(engine.compress(vectors["im"], "im"), vectors["ltm"], atol=1e-5)
    with pytest.raises(ValueError, match="cannot compress from tier 'ltm'"):
        engine.compress(vectors["ltm"], "ltm")


def test_encoding_only_some_tiers_gives_the_same_vectors(engine: EmbeddingEngine) -> None:
    features = engine.schema.extract_batch(simulate_states(16, seed=6))
    every = engine.encode_features(features)
    for tiers in (("stm",), ("im",), ("ltm", "stm")):
        some = engine.encode_features(features, tiers)
        assert list(some) == list(tiers)
        for tier in tiers:
            np.testing.assert_array_equal(some[tier], every[tier])
    with pytest.raises(ValueError, match=r"unknown tiers \['xtm'\]"):
        engine.encode_features(features, ("xtm",))


def test_action_maps_to_a_state_as_designed(engine: EmbeddingEngine) -> None:
    action = {
        "action_type": "gather",
        "action_params": {"amount": 5, "target": "tree"},
        "context": {"energy": 40},
        "outcome": {"gained": 12},
    }
    assert action_to_state(action) == {
        "current_action": "gather", "param_amount": 5, "param_target": "tree",
        "context_energy": 40, "outcome_gained": 12,
    }  # fmt: skip
    assert action_to_state({"outcome": "success"}) == {"outcome": "success"}
    embedded = engine.create_action_embedding(action)
    direct = engine.create_state_embedding(action_to_state(action))
    np.testing.assert_array_equal(embedded["full_vector"], direct["full_vector"])


def test_bad_state_in_a_batch_is_named(engine: EmbeddingEngine) -> None:
    states: list[dict[str, object]] = [dict(s) for s in simulate_states(3)]
    states[1]["health"] = "high"
    with pytest.raises(FeatureError, match=r"item 1.*health.*'high'"):
        engine.encode_states(states)


def test_reconstruct_checks_tier_and_size(engine: EmbeddingEngine) -> None:
    with pytest.raises(ValueError, match="unknown tier 'xtm'"):
        engine.reconstruct_from_embedding(np.zeros(32, np.float32), "xtm")
    with pytest.raises(ValueError, match="a ltm embedding has 32 values, got 128"):
        engine.reconstruct_from_embedding(np.zeros(128, np.float32), "ltm")


def test_untrained_engine_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="UNTRAINED"):
        engine = EmbeddingEngine.untrained()
    assert not engine.trained and engine.version == "untrained"
    assert "UNTRAINED" in caplog.text


def test_default_model_loads_with_weights_only(default_engine: EmbeddingEngine) -> None:
    raw = torch.load(DEFAULT_MODEL, weights_only=True)
    assert raw["version"] == default_engine.version
    assert default_engine.trained
    assert default_engine.schema == default_schema()
    checkpoint = load_checkpoint(DEFAULT_MODEL, expect_schema=default_schema())
    assert checkpoint.metrics["val_mse"]["ltm"] < 0.02


def test_default_model_reconstructs_unseen_states(default_engine: EmbeddingEngine) -> None:
    states = simulate_states(400, seed=20_000)
    vectors = default_engine.encode_states(states)
    for tier, share, health_tolerance in (("stm", 0.95, 5), ("im", 0.95, 5), ("ltm", 0.6, 15)):
        restored = [default_engine.reconstruct_from_embedding(v, tier).state for v in vectors[tier]]
        for field in ("agent_type", "current_action"):
            same = np.mean(
                [r.get(field) == s[field] for r, s in zip(restored, states, strict=True)]
            )
            assert same >= share, f"{tier} restores {field} for only {same:.0%}"
        health_error = np.mean(
            [abs(r["health"] - s["health"]) for r, s in zip(restored, states, strict=True)]
        )
        assert health_error < health_tolerance, f"{tier} health off by {health_error:.1f}"


def test_default_model_beats_pca_at_ltm(default_engine: EmbeddingEngine) -> None:
    schema = default_engine.schema
    train = schema.extract_batch(simulate_states(40_000, seed=0, worlds=8))
    held_out = schema.extract_batch(simulate_states(3000, seed=20_000))
    mean = train.mean(0)
    components = np.linalg.svd(train - mean, full_matrices=False)[2][:32]  # (32, input_dim)
    pca_mse = (((held_out - mean) @ components.T @ components + mean - held_out) ** 2).mean()
    ltm = default_engine.encode_features(held_out)["ltm"]
    ae_mse = ((default_engine.decode(ltm, "ltm") - held_out) ** 2).mean()
    assert ae_mse < pca_mse, f"LTM MSE {ae_mse:.5f} is not below PCA-32's {pca_mse:.5f}"


class _Foreign:
    """A class a weights-only load refuses to rebuild."""


def _broken_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, what its error must say)} of files that are not usable checkpoints."""
    good = DEFAULT_MODEL.read_bytes()
    payload = torch.load(DEFAULT_MODEL, weights_only=True)
    files: dict[str, tuple[bytes | object, str]] = {
        "garbage": (b"hello, not a model", "is not a PyTorch checkpoint file"),
        "truncated": (good[: len(good) // 2], "is corrupt or truncated"),
        "empty": (b"", "is empty"),
        "foreign objects": ({"weights": _Foreign()}, "holds Python objects besides tensors"),
        "foreign dict": ({"weights": torch.zeros(2)}, "is not a memory_tiers checkpoint"),
        "future schema": (
            {**payload, "schema": {"version": 99}},
            "holds a schema or model config this version cannot read",
        ),
        "missing keys": ({"format": payload["format"]}, "is an incomplete checkpoint: no schema"),
        "wrong shapes": (
            {**payload, "state_dict": {k: v[:1] for k, v in payload["state_dict"].items()}},
            "its weights do not fit its own model config (Error(s) in loading state_dict",
        ),
    }
    made = {}
    for case, (content, message) in files.items():
        path = tmp_path / f"{case.replace(' ', '-')}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        made[case] = (path, message)
    return made


def test_a_broken_checkpoint_gets_one_line_naming_the_file(tmp_path: Path) -> None:
    for case, (path, expected) in _broken_checkpoints(tmp_path).items():
        with pytest.raises(ModelError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert str(path) in message, case
        assert expected in message, (case, message)
        assert "\n" not in message, case
        assert "weights_only" not in message and "issue" not in message, (case, message)
    with pytest.raises(ModelError, match=f"model checkpoint {tmp_path} is a folder"):
        load_checkpoint(tmp_path)


def test_serve_refuses_a_corrupt_checkpoint_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from memory_tiers.cli import main

    path = tmp_path / "half.pt"
    path.write_bytes(DEFAULT_MODEL.read_bytes()[:1000])
    result = CliRunner().invoke(
        main, ["serve"], env={"MT_MODEL_PATH": str(path), "MT_REDIS_URL": "redis://127.0.0.1:1"}
    )
    assert result.exit_code == 2
    assert f"memory-tiers serve stops: model checkpoint {path} is corrupt" in result.output
