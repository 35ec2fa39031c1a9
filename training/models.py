"""Encoder/decoder pairs for images (convolutional) and tabular vectors (MLP).

``build_autoencoder(input_shape, latent_dim, ...)`` picks the body from the rank of the input
shape (a registry, not a branch on names): ``(C, H, W)`` gets a symmetric convolutional pair
that adapts to the image size and channels, ``(F,)`` an MLP pair.

- Convolutional: stride-2 blocks (kernel 4, padding 1) with channels ``width, 2 width, ...``
  capped at ``8 width``, halving the spatial size while it is above 4 and even (28 -> 14 -> 7,
  64 -> ... -> 4, 8 -> 4); an odd size above 8 is halved too (floor) and restored by the
  decoder's ``output_padding``, so large odd images do not end in a huge linear layer. Then a
  linear layer to the latent. The decoder mirrors it with ``ConvTranspose2d`` back to exactly
  ``(C, H, W)`` and ends in a sigmoid (images live in [0, 1]).
- MLP: ``F -> hidden -> hidden -> latent`` and back, identity output (tabular inputs are
  standardized).
- Normalization is GroupNorm, never BatchNorm: BatchNorm couples the samples of a batch, which
  leaks into the batch-level MMD and differs between DDP ranks.

A stochastic (gaussian) encoder's last layer outputs ``2 * latent_dim`` numbers (mean, log
variance). ``Autoencoder.encoder`` always returns only the mean: it is the module exported to
ONNX, so it is a plain traceable module with no randomness. Sampling happens in
``Autoencoder.forward`` (training mode only).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Autoencoder", "Decoder", "Encoder", "build_autoencoder", "conv_plan"]

# Stop halving once the feature map is this small (either side).
_MIN_SIZE = 4
# An odd side larger than this is still halved (floor); smaller odd sides stop the encoder.
_ODD_SIZE_LIMIT = 8
# Channel growth stops at this multiple of ``width``.
_MAX_WIDTH_MULT = 8
# GroupNorm uses up to this many groups (fewer when the channel count is not a multiple).
_MAX_GROUPS = 8


def _act() -> nn.Module:
    return nn.SiLU()


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(_MAX_GROUPS, channels), channels)


def _halvable(size: int) -> bool:
    return size > _MIN_SIZE and (size % 2 == 0 or size > _ODD_SIZE_LIMIT)


def conv_plan(height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes the encoder passes through: ``[(H, W), (H/2, W/2), ...]``."""
    sizes = [(height, width)]
    while _halvable(sizes[-1][0]) and _halvable(sizes[-1][1]):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))  # kernel 4, stride 2, padding 1 gives floor(n / 2)
    return sizes


class Encoder(nn.Module):
    """``forward(x)`` returns the latent mean (B, D); :meth:`params` also the log variance.

    ``body`` maps an input batch to ``latent_dim`` numbers, or ``2 * latent_dim`` (mean, log
    variance) when ``stochastic``.
    """

    def __init__(self, body: nn.Module, latent_dim: int, stochastic: bool) -> None:
        super().__init__()
        self.body = body
        self.latent_dim = latent_dim
        self.stochastic = stochastic

    def params(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean, log variance); the log variance is None for a deterministic encoder."""
        h = self.body(x)
        if not self.stochastic:
            return h, None
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def forward(self, x: Tensor) -> Tensor:
        return self.params(x)[0]


class Decoder(nn.Module):
    """``forward(z)`` returns a reconstruction shaped like the input (B, *input_shape)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


def _conv_pair(
    input_shape: tuple[int, ...], out_dim: int, latent_dim: int, width: int, hidden: int
) -> tuple[nn.Module, nn.Module]:
    channels_in, image_h, image_w = input_shape
    sizes = conv_plan(image_h, image_w)
    channels = [channels_in] + [width * min(2**i, _MAX_WIDTH_MULT) for i in range(len(sizes) - 1)]
    last_c, (last_h, last_w) = channels[-1], sizes[-1]
    flat = last_c * last_h * last_w

    enc: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _norm(c_out), _act()]
    enc += [nn.Flatten(), nn.Linear(flat, out_dim)]

    dec: list[nn.Module] = [nn.Linear(latent_dim, flat), nn.Unflatten(1, (last_c, last_h, last_w))]
    n_blocks = len(sizes) - 1
    if n_blocks:
        dec.append(_act())  # the first transposed conv sees activated features
    for i in reversed(range(n_blocks)):
        (h_out, w_out), c_in, c_out = sizes[i], channels[i + 1], channels[i]
        # floor-halving lost the odd pixel; output_padding puts it back
        pad = (h_out % 2, w_out % 2)
        dec.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=pad))
        if i > 0:
            dec += [_norm(c_out), _act()]
    dec.append(nn.Sigmoid())
    return nn.Sequential(*enc), nn.Sequential(*dec)


def _mlp_pair(
    input_shape: tuple[int, ...], out_dim: int, latent_dim: int, width: int, hidden: int
) -> tuple[nn.Module, nn.Module]:
    (features,) = input_shape

    def mlp(n_in: int, n_out: int) -> nn.Sequential:
        layers = [nn.Linear(n_in, hidden), _act(), nn.Linear(hidden, hidden), _act()]
        return nn.Sequential(*layers, nn.Linear(hidden, n_out))

    return mlp(features, out_dim), mlp(latent_dim, features)


# input rank -> builder of (encoder body, decoder body)
_PAIRS: dict[int, Callable[..., tuple[nn.Module, nn.Module]]] = {3: _conv_pair, 1: _mlp_pair}


class Autoencoder(nn.Module):
    """An encoder/decoder pair; :meth:`forward` returns z, mean, logvar and recon."""

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        input_shape: tuple[int, ...],
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.input_shape = input_shape
        self.latent_dim = encoder.latent_dim
        self.stochastic = encoder.stochastic
        self._config = config

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean, log variance), log variance None for a deterministic encoder."""
        return self.encoder.params(x)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        mean, logvar = self.encode(x)
        z = mean
        if logvar is not None and self.training:
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)  # reparameterization
        return {"z": z, "mean": mean, "logvar": logvar, "recon": self.decoder(z)}

    def describe(self) -> dict[str, Any]:
        """JSON-able hyper-parameters: ``build_autoencoder(**describe())`` rebuilds the model."""
        return {"input_shape": list(self.input_shape), **self._config}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def build_autoencoder(
    input_shape: Sequence[int],
    latent_dim: int,
    *,
    stochastic: bool = False,
    width: int = 32,
    hidden: int = 256,
) -> Autoencoder:
    """An autoencoder for inputs shaped ``(C, H, W)`` (conv) or ``(F,)`` (MLP).

    ``width`` is the first conv layer's channel count, ``hidden`` the MLP's hidden size; each is
    ignored by the other body but kept in :meth:`Autoencoder.describe` so a config round-trips.
    """
    shape = tuple(_positive_int("every input_shape entry", s) for s in input_shape)
    pair = _PAIRS.get(len(shape))
    if pair is None:
        raise ValueError(
            f"input_shape must be (C, H, W) for images or (F,) for tabular data, got {shape}"
        )
    latent_dim = _positive_int("latent_dim", latent_dim)
    width = _positive_int("width", width)
    hidden = _positive_int("hidden", hidden)
    stochastic = bool(stochastic)
    out_dim = 2 * latent_dim if stochastic else latent_dim
    enc_body, dec_body = pair(shape, out_dim, latent_dim, width, hidden)
    config = {"latent_dim": latent_dim, "stochastic": stochastic, "width": width, "hidden": hidden}
    return Autoencoder(Encoder(enc_body, latent_dim, stochastic), Decoder(dec_body), shape, config)
