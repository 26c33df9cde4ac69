"""Neural networks that map input coordinates to PDE outputs."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .errors import PinnConfigError


class Activation(nn.Module):
    """Pointwise activation that also returns its first two derivatives (for forward-mode Taylor)."""

    name: str = ""

    def derivs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return sigma(z), sigma'(z), sigma''(z), reusing shared intermediates."""
        raise NotImplementedError


class Tanh(Activation):
    name = "tanh"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z)

    def derivs(self, z):
        s = torch.tanh(z)
        d1 = 1 - s * s
        return s, d1, -2 * s * d1


class Sin(Activation):
    name = "sin"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z)

    def derivs(self, z):
        s = torch.sin(z)
        return s, torch.cos(z), -s


class GELU(Activation):
    name = "gelu"
    _inv_sqrt2 = 1.0 / math.sqrt(2.0)
    _inv_sqrt2pi = 1.0 / math.sqrt(2.0 * math.pi)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(z)

    def derivs(self, z):
        cdf = 0.5 * (1 + torch.erf(z * self._inv_sqrt2))
        pdf = torch.exp(-0.5 * z * z) * self._inv_sqrt2pi
        return z * cdf, cdf + z * pdf, pdf * (2 - z * z)


class SiLU(Activation):
    name = "silu"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(z)

    def derivs(self, z):
        sg = torch.sigmoid(z)
        dsg = sg * (1 - sg)
        return z * sg, sg + z * dsg, dsg * (2 + z * (1 - 2 * sg))


class Identity(Activation):
    name = "identity"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def derivs(self, z):
        return z, torch.ones_like(z), torch.zeros_like(z)


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
