"""Neural networks that map input coordinates to PDE outputs."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .errors import PinnConfigError


class Activation(nn.Module):
    """Pointwise activation that also returns its first three derivatives (for forward-mode Taylor)."""

    name: str = ""

    def derivs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return sigma(z), sigma'(z), sigma''(z), reusing shared intermediates."""
        raise NotImplementedError

    def third(self, z: torch.Tensor, s: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Return the third derivative at ``z``, given ``derivs(z)`` (for the fused Taylor backward)."""
        raise NotImplementedError


class Tanh(Activation):
    name = "tanh"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z)

    def derivs(self, z):
        s = torch.tanh(z)
        s1 = torch.addcmul(scalar(1.0, s), s, s, value=-1)  # 1 - s^2, one pass
        return s, s1, torch.mul(s, s1).mul_(-2)

    def third(self, z, s, s1, s2):
        return torch.add(scalar(4.0, s1), s1, alpha=-6).mul_(s1)  # -2 s1 (1 - 3 s^2) = s1 (4 - 6 s1)


class Sin(Activation):
    name = "sin"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z)

    def derivs(self, z):
        s = torch.sin(z)
        return s, torch.cos(z), -s

    def third(self, z, s, s1, s2):
        return -s1


class GELU(Activation):
    name = "gelu"
    _inv_sqrt2 = 1.0 / math.sqrt(2.0)
    _inv_sqrt2pi = 1.0 / math.sqrt(2.0 * math.pi)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(z)

    def _pdf(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * z * z) * self._inv_sqrt2pi

    def derivs(self, z):
        cdf = 0.5 * (1 + torch.erf(z * self._inv_sqrt2))
        pdf = self._pdf(z)
        return z * cdf, cdf + z * pdf, pdf * (2 - z * z)

    def third(self, z, s, s1, s2):
        return self._pdf(z) * z * (z * z - 4)


class SiLU(Activation):
    name = "silu"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(z)

    def derivs(self, z):
        sg = torch.sigmoid(z)
        dsg = sg * (1 - sg)
        return z * sg, sg + z * dsg, dsg * (2 + z * (1 - 2 * sg))

    def third(self, z, s, s1, s2):
        sg = torch.sigmoid(z)
        dsg = sg * (1 - sg)
        c = 1 - 2 * sg
        return dsg * (c * (3 + z * c) - 2 * z * dsg)


class Identity(Activation):
    name = "identity"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def derivs(self, z):
        return z, torch.ones_like(z), torch.zeros_like(z)

    def third(self, z, s, s1, s2):
        return torch.zeros_like(z)


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor like ``like`` (``addcmul(scalar(1, s), s, s, value=-1)``: one pass)."""
    return torch.full((), value, dtype=like.dtype, device=like.device)


ACTIVATIONS: dict[str, Callable[[], Activation]] = {
    cls.name: cls for cls in (Tanh, Sin, GELU, SiLU, Identity)
}


def make_activation(name: str) -> Activation:
    """Look an activation up by name, with a one-line error listing the accepted names."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise PinnConfigError(
            f"network.activation={name!r} is not known; choose from: {', '.join(ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """Fully connected network: in_dim -> [width] * depth -> out_dim, Xavier-initialised.

    ``layers`` holds the nn.Linear layers in order; ``act`` is applied after every layer but the last.
    Inputs are affinely mapped from ``bounds`` to [-1, 1] by the fixed ``in_scale``/``in_shift`` buffers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 32,
        depth: int = 3,
        activation: str = "tanh",
        bounds: list[tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        for key, val in (("network.width", width), ("network.depth", depth)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise PinnConfigError(f"{key}={val!r} is invalid; it must be a positive integer")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.act = make_activation(activation)
        sizes = [in_dim] + [width] * depth + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        lo = torch.tensor([b[0] for b in bounds] if bounds else [-1.0] * in_dim)
        hi = torch.tensor([b[1] for b in bounds] if bounds else [1.0] * in_dim)
        self.register_buffer("in_scale", 2.0 / (hi - lo))
        self.register_buffer("in_shift", -(hi + lo) / (hi - lo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.in_scale + self.in_shift
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        return self.layers[-1](h)


def build_network(cfg, in_dim: int, out_dim: int, bounds=None) -> nn.Module:
    """Build the network named by ``cfg.name`` from its config group."""
    name = cfg.get("name", "mlp")
    if name != "mlp":
        raise PinnConfigError(f"network={name!r} is not known; choose from: mlp")
    return MLP(in_dim, out_dim, width=cfg.width, depth=cfg.depth, activation=cfg.activation, bounds=bounds)
