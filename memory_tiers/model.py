"""The state autoencoder: one encoder, three nested bottlenecks (STM > IM > LTM), one decoder.

The architecture is the design's, layer for layer and name for name, so its checkpoints load
here. The bottlenecks are chained: IM = im_bottleneck(STM) and LTM = ltm_bottleneck(IM). That
is what lets a memory move down a tier from its stored vector alone (`stm_to_im`,
`im_to_ltm`), and `encode_im` / `encode_ltm` are written through those same functions so the
equality holds by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, ModelError

ENCODER_HIDDEN = (512, 256)
"""Widths of the encoder's hidden layers (the decoder mirrors them), fixed by the design."""


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of a StateAutoencoder; stored in every checkpoint."""

    input_dim: int
    stm_dim: int = 384
    im_dim: int = 128
    ltm_dim: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model config {f.name}: expected a positive int, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: unknown or missing keys, or a dimension that is not a positive int.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown or "input_dim" not in data:
            raise ConfigError(
                f"model config: unknown keys {unknown}, input_dim given: {'input_dim' in data}"
            )
        return cls(**data)


class StateAutoencoder(nn.Module):
    """Autoencoder from feature vectors in [0, 1] to STM/IM/LTM embeddings and back."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim, stm, im, ltm = config.input_dim, config.stm_dim, config.im_dim, config.ltm_dim
        h1, h2 = ENCODER_HIDDEN
        self.encoder = nn.Sequential(
            nn.Linear(dim, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
        )
        # nested bottlenecks: each tier is computed from the one above it, never from x
        self.stm_bottleneck = nn.Linear(h2, stm)
        self.im_bottleneck = nn.Linear(stm, im)
        self.ltm_bottleneck = nn.Linear(im, ltm)
        # expansions back up, so every tier decodes through the one decoder
        self.ltm_to_im = nn.Linear(ltm, im)
        self.im_to_stm = nn.Linear(im, stm)
        self.decoder = nn.Sequential(
            nn.Linear(stm, h2),
            nn.ReLU(),
            nn.Linear(h2, h1),
            nn.ReLU(),
            nn.Linear(h1, dim),
            nn.Sigmoid(),  # features are normalized to [0, 1]
        )

    @classmethod
    def from_dims(
        cls, input_dim: int, stm_dim: int = 384, im_dim: int = 128, ltm_dim: int = 32
    ) -> StateAutoencoder:
        """The design's signature: StateAutoencoder(input_dim, stm_dim, im_dim, ltm_dim)."""
        return cls(ModelConfig(input_dim, stm_dim, im_dim, ltm_dim))

    # --- encoding ---

    def encode_stm(self, x: Tensor) -> Tensor:
        """Features to STM embeddings: (B, input_dim) -> (B, stm_dim)."""
        _check_width(x, self.config.input_dim, "features")
        stm: Tensor = self.stm_bottleneck(self.encoder(x))  # (B, D) -> (B, 256) -> (B, 384)
        return stm

    def stm_to_im(self, stm: Tensor) -> Tensor:
        """STM embeddings to IM, the bottleneck only (consolidation): (B, 384) -> (B, 128)."""
        _check_width(stm, self.config.stm_dim, "STM vectors")
        im: Tensor = self.im_bottleneck(stm)
        return im

    def im_to_ltm(self, im: Tensor) -> Tensor:
        """IM embeddings to LTM, the bottleneck only (consolidation): (B, 128) -> (B, 32)."""
        _check_width(im, self.config.im_dim, "IM vectors")
        ltm: Tensor = self.ltm_bottleneck(im)
        return ltm

    def encode_im(self, x: Tensor) -> Tensor:
        """Features to IM embeddings: (B, input_dim) -> (B, im_dim)."""
        return self.stm_to_im(self.encode_stm(x))

    def encode_ltm(self, x: Tensor) -> Tensor:
        """Features to LTM embeddings: (B, input_dim) -> (B, ltm_dim)."""
        return self.im_to_ltm(self.encode_im(x))

    def encode_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All three embeddings with one encoder pass: (B, D) -> (B, 384), (B, 128), (B, 32)."""
        stm = self.encode_stm(x)
        im = self.stm_to_im(stm)
        return stm, im, self.im_to_ltm(im)

    # --- decoding ---

    def decode_from_stm(self, z: Tensor) -> Tensor:
        """STM embeddings to features in [0, 1]: (B, 384) -> (B, input_dim)."""
        _check_width(z, self.config.stm_dim, "STM vectors")
        features: Tensor = self.decoder(z)
        return features

    def decode_from_im(self, z: Tensor) -> Tensor:
        """IM embeddings to features: (B, 128) -> (B, 384) -> (B, input_dim)."""
        _check_width(z, self.config.im_dim, "IM vectors")
        return self.decode_from_stm(self.im_to_stm(z))

    def decode_from_ltm(self, z: Tensor) -> Tensor:
        """LTM embeddings to features: (B, 32) -> (B, 128) -> (B, input_dim)."""
        _check_width(z, self.config.ltm_dim, "LTM vectors")
        return self.decode_from_im(self.ltm_to_im(z))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction through STM, and the STM embedding: (B, D) -> (B, D), (B, 384)."""
        stm = self.encode_stm(x)
        return self.decode_from_stm(stm), stm


class FoldedModel:
    """The autoencoder's forward passes on CPU, as fused ops on folded weights.

    At a recall's sizes (one query, 50 candidates a tier) the modules' call machinery costs
    more than the arithmetic. Here each layer is one fused op on a snapshot of the weights,
    and linear maps that meet with no nonlinearity between them are folded into one: an IM
    vector reaches the decoder's first hidden layer through one 128 x 256 matrix (im_to_stm
    then decoder[0]), an LTM vector through one 32 x 256, so decoding takes fewer
    multiplications at any batch size.

    One row (a recall's query) goes through numpy, whose product of one row costs half of
    torch's (a query encodes in 0.09 ms against 0.18, 2-core EPYC); more rows through torch
    (addmm), whose threads follow the service's setting (MT_TORCH_THREADS): numpy's BLAS
    threads ignore it and, with several processes on two cores, made a 51-row decode take
    17 ms instead of 1 ms. OpenBLAS runs a one-row product on the calling thread while in x out
    < 2**18 (measured: 1.00 CPU second per wall second at 512 x 512, 1.98 at 2048 x 256), so a
    model with a larger layer runs every size through torch.
    Build a new one after training the model further.
    """

    def __init__(self, model: StateAutoencoder) -> None:
        into_stm = _affine(model.decoder[0])
        into_im = _chained(_affine(model.im_to_stm), into_stm)
        into_decoder = {"stm": into_stm, "im": into_im}
        into_decoder["ltm"] = _chained(_affine(model.ltm_to_im), into_im)
        self._into_decoder = {tier: _layer(affine) for tier, affine in into_decoder.items()}
        self._decoder = [_layer(_affine(model.decoder[i])) for i in (2, 4)]
        self._encoder = [_layer(_affine(model.encoder[i])) for i in (0, 2)]
        self._bottlenecks = {
            tier: _layer(_affine(layer))
            for tier, layer in (
                ("stm", model.stm_bottleneck),
                ("im", model.im_bottleneck),
                ("ltm", model.ltm_bottleneck),
            )
        }
        layers = [*self._into_decoder.values(), *self._decoder, *self._encoder]
        layers += self._bottlenecks.values()
        self._one_row_in_numpy = all(layer.weight.size < ONE_THREAD_PRODUCT for layer in layers)

    @torch.no_grad()
    def encode(self, features: np.ndarray, down_to: str) -> dict[str, np.ndarray]:
        """Feature rows (N, input_dim) to {tier: (N, dim)}, from STM down to tier `down_to`."""
        if len(features) == 1 and self._one_row_in_numpy:
            return self._encode(_NumpyOps(), features, down_to)
        return self._encode(_TorchOps(), features, down_to)

    @torch.no_grad()
    def decode(self, vectors: np.ndarray, tier: str) -> np.ndarray:
        """A tier's embeddings (N, dim) to feature rows (N, input_dim)."""
        if len(vectors) == 1 and self._one_row_in_numpy:
            return self._decode(_NumpyOps(), vectors, tier)
        return self._decode(_TorchOps(), vectors, tier)

    def _encode(
        self, ops: _Ops[_Rows], features: np.ndarray, down_to: str
    ) -> dict[str, np.ndarray]:
        hidden = ops.rows(features)
        for layer in self._encoder:
            hidden = ops.relu(ops.affine(layer, hidden))
        vectors = {}
        for tier, layer in self._bottlenecks.items():
            hidden = ops.affine(layer, hidden)
            vectors[tier] = ops.array(hidden)
            if tier == down_to:
                break
        return vectors

    def _decode(self, ops: _Ops[_Rows], vectors: np.ndarray, tier: str) -> np.ndarray:
        hidden = ops.relu(ops.affine(self._into_decoder[tier], ops.rows(vectors)))
        middle, out = self._decoder
        hidden = ops.relu(ops.affine(middle, hidden))
        return ops.array(ops.sigmoid(ops.affine(out, hidden)))


ONE_THREAD_PRODUCT = 2**18
"""in x out of a layer below which OpenBLAS multiplies one row on the calling thread."""


class _Layer(NamedTuple):
    """One folded affine map, rows @ weight + bias, in float32: numpy arrays and torch tensors
    over the same memory."""

    weight: np.ndarray  # (in, out)
    bias: np.ndarray  # (out,)
    weight_tensor: Tensor
    bias_tensor: Tensor


_Rows = TypeVar("_Rows", np.ndarray, Tensor)


class _Ops(Protocol[_Rows]):
    """FoldedModel's steps on one kind of rows: each step may reuse its input's memory."""

    def rows(self, rows: np.ndarray) -> _Rows: ...
    def affine(self, layer: _Layer, rows: _Rows) -> _Rows: ...
    def relu(self, rows: _Rows) -> _Rows: ...
    def sigmoid(self, rows: _Rows) -> _Rows: ...
    def array(self, rows: _Rows) -> np.ndarray: ...


class _NumpyOps:
    """The steps on numpy arrays."""

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32)

    def affine(self, layer: _Layer, rows: np.ndarray) -> np.ndarray:
        product: np.ndarray = rows @ layer.weight
        product += layer.bias
        return product

    def relu(self, rows: np.ndarray) -> np.ndarray:
        np.maximum(rows, 0, out=rows)
        return rows

    def sigmoid(self, rows: np.ndarray) -> np.ndarray:
        # 1 / (1 + e^-x) as (1 + tanh(x / 2)) / 2: the same value, and no overflow
        rows *= 0.5
        np.tanh(rows, out=rows)
        rows += 1
        rows *= 0.5
        return rows

    def array(self, rows: np.ndarray) -> np.ndarray:
        return rows


class _TorchOps:
    """The steps on CPU tensors (addmm: one fused op a layer)."""

    def rows(self, rows: np.ndarray) -> Tensor:
        return _tensor(rows)

    def affine(self, layer: _Layer, rows: Tensor) -> Tensor:
        return torch.addmm(layer.bias_tensor, rows, layer.weight_tensor)

    def relu(self, rows: Tensor) -> Tensor:
        return rows.relu_()

    def sigmoid(self, rows: Tensor) -> Tensor:
        return rows.sigmoid_()

    def array(self, rows: Tensor) -> np.ndarray:
        array: np.ndarray = rows.numpy()
        return array


_Affine = tuple[np.ndarray, np.ndarray]
"""(weight (in, out), bias (out,)): rows @ weight + bias, in float64."""


def _affine(layer: nn.Module) -> _Affine:
    """A Linear layer's map in float64 (folding in float64 keeps the float32 result exact)."""
    assert isinstance(layer, nn.Linear)
    weight = layer.weight.detach().cpu().double().numpy()
    return weight.T, layer.bias.detach().cpu().double().numpy()


def _chained(first: _Affine, then: _Affine) -> _Affine:
    """One map equal to `first` followed by `then`."""
    (w1, b1), (w2, b2) = first, then
    return w1 @ w2, b1 @ w2 + b2


def _layer(affine: _Affine) -> _Layer:
    """A folded map in float32, for both FoldedModel paths."""
    weight, bias = (np.ascontiguousarray(part, dtype=np.float32) for part in affine)
    return _Layer(weight, bias, torch.from_numpy(weight), torch.from_numpy(bias))


def _tensor(rows: np.ndarray) -> Tensor:
    """A float32 CPU tensor over (a writable, contiguous float32 copy of, if need be) `rows`."""
    return torch.from_numpy(np.require(rows, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))


def _check_width(t: Tensor, width: int, what: str) -> None:
    """Refuse a tensor whose last dimension is not `width`, before torch fails deep inside."""
    if t.dim() == 0 or t.shape[-1] != width:
        raise ModelError(f"{what}: expected last dimension {width}, got shape {tuple(t.shape)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
