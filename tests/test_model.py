"""StateAutoencoder: the design's architecture, shapes and the tier consolidation identities."""

from __future__ import annotations

import pytest
import torch

from memory_tiers.errors import ConfigError, ModelError
from memory_tiers.features import DEFAULT_SCHEMA
from memory_tiers.model import ModelConfig, StateAutoencoder, count_parameters

CONFIG = ModelConfig(input_dim=DEFAULT_SCHEMA.input_dim)
B = 4


@pytest.fixture(scope="module")
def model() -> StateAutoencoder:
    torch.manual_seed(0)
    return StateAutoencoder(CONFIG).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(B, CONFIG.input_dim)


def test_encode_and_decode_shapes(model: StateAutoencoder, x: torch.Tensor) -> None:
    d, s, i, t = CONFIG.input_dim, CONFIG.stm_dim, CONFIG.im_dim, CONFIG.ltm_dim
    with torch.no_grad():
        assert model.encode_stm(x).shape == (B, s)
        assert model.encode_im(x).shape == (B, i)
        assert model.encode_ltm(x).shape == (B, t)
        assert model.stm_to_im(torch.zeros(B, s)).shape == (B, i)
        assert model.im_to_ltm(torch.zeros(B, i)).shape == (B, t)
        assert model.decode_from_stm(torch.zeros(B, s)).shape == (B, d)
        assert model.decode_from_im(torch.zeros(B, i)).shape == (B, d)
        assert model.decode_from_ltm(torch.zeros(B, t)).shape == (B, d)
        recon, stm = model(x)
    assert recon.shape == (B, d)
    assert stm.shape == (B, s)


def test_tiers_chain_through_the_bottlenecks(model: StateAutoencoder, x: torch.Tensor) -> None:
    with torch.no_grad():
        stm, im, ltm = model.encode_all(x)
        torch.testing.assert_close(model.encode_stm(x), stm)
        torch.testing.assert_close(model.encode_im(x), model.stm_to_im(model.encode_stm(x)))
        torch.testing.assert_close(model.encode_ltm(x), model.im_to_ltm(model.encode_im(x)))
        torch.testing.assert_close(model.encode_im(x), im)
        torch.testing.assert_close(model.encode_ltm(x), ltm)
        # consolidation from stored vectors is the bottleneck layer alone
        torch.testing.assert_close(model.stm_to_im(stm), model.im_bottleneck(stm))
        torch.testing.assert_close(model.im_to_ltm(im), model.ltm_bottleneck(im))


def test_forward_reconstructs_from_stm(model: StateAutoencoder, x: torch.Tensor) -> None:
    with torch.no_grad():
        recon, stm = model(x)
        torch.testing.assert_close(stm, model.encode_stm(x))
        torch.testing.assert_close(recon, model.decode_from_stm(stm))
        # each tier decodes through the expansions into the same decoder
        _, im, ltm = model.encode_all(x)
        torch.testing.assert_close(
            model.decode_from_ltm(ltm), model.decoder(model.im_to_stm(model.ltm_to_im(ltm)))
        )
        torch.testing.assert_close(model.decode_from_im(im), model.decoder(model.im_to_stm(im)))


def test_decoder_output_is_in_unit_interval(model: StateAutoencoder) -> None:
    torch.manual_seed(2)
    with torch.no_grad():
        for z in (
            model.decode_from_stm(torch.randn(B, CONFIG.stm_dim) * 100),
            model.decode_from_im(torch.randn(B, CONFIG.im_dim) * 100),
            model.decode_from_ltm(torch.randn(B, CONFIG.ltm_dim) * 100),
        ):
            assert float(z.min()) >= 0.0
            assert float(z.max()) <= 1.0


def test_parameter_count_matches_architecture() -> None:
    d, s, i, t = 152, 384, 128, 32

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    expected = (
        linear(d, 512) + linear(512, 256)  # encoder
        + linear(256, s) + linear(s, i) + linear(i, t)  # bottlenecks
        + linear(t, i) + linear(i, s)  # expansions
        + linear(s, 256) + linear(256, 512) + linear(512, d)  # decoder
    )  # fmt: skip
    model = StateAutoencoder(ModelConfig(d, s, i, t))
    assert count_parameters(model) == expected == 723_640


def test_state_dict_keys_follow_the_design() -> None:
    keys = set(StateAutoencoder(ModelConfig(10)).state_dict())
    assert keys == {
        *(f"{m}.{p}" for m in ("encoder.0", "encoder.2") for p in ("weight", "bias")),
        *(
            f"{m}.{p}"
            for m in ("stm_bottleneck", "im_bottleneck", "ltm_bottleneck", "ltm_to_im", "im_to_stm")
            for p in ("weight", "bias")
        ),
        *(f"{m}.{p}" for m in ("decoder.0", "decoder.2", "decoder.4") for p in ("weight", "bias")),
    }


def test_from_dims_is_the_design_signature() -> None:
    model = StateAutoencoder.from_dims(20, 64, 16, 4)
    assert model.config == ModelConfig(input_dim=20, stm_dim=64, im_dim=16, ltm_dim=4)
    assert model.encode_ltm(torch.rand(3, 20)).shape == (3, 4)


def test_runs_on_extracted_features() -> None:
    states = [{"health": 10, "agent_type": "builder"}, {"perception": [[3] * 5] * 5}, {}]
    x = torch.from_numpy(DEFAULT_SCHEMA.extract_batch(states))
    with torch.no_grad():
        recon, stm = StateAutoencoder(CONFIG)(x)
    assert recon.shape == (3, DEFAULT_SCHEMA.input_dim)
    assert stm.shape == (3, 384)


def test_wrong_width_raises_model_error(model: StateAutoencoder) -> None:
    with pytest.raises(ModelError, match="features: expected last dimension 152"):
        model.encode_stm(torch.zeros(2, 151))
    with pytest.raises(ModelError, match="STM vectors: expected last dimension 384"):
        model.stm_to_im(torch.zeros(2, 128))
    with pytest.raises(ModelError, match="IM vectors"):
        model.decode_from_im(torch.zeros(2, 32))
    with pytest.raises(ModelError, match="LTM vectors"):
        model.decode_from_ltm(torch.zeros(2, 128))


def test_config_round_trip() -> None:
    config = ModelConfig(input_dim=152, stm_dim=256, im_dim=64, ltm_dim=16)
    data = config.to_dict()
    assert data == {"input_dim": 152, "stm_dim": 256, "im_dim": 64, "ltm_dim": 16}
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({"input_dim": 7}) == ModelConfig(7, 384, 128, 32)


@pytest.mark.parametrize(
    "data",
    [
        {"input_dim": 0},
        {"input_dim": -5},
        {"input_dim": 10, "stm_dim": 2.5},
        {"input_dim": True},
        {"input_dim": 10, "ltm_dim": "32"},
        {"stm_dim": 384},
        {"input_dim": 10, "hidden": 512},
    ],
)
def test_config_rejects_bad_dims(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="model config"):
        ModelConfig.from_dict(data)
