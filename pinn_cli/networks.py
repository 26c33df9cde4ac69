"""Neural networks that map input coordinates to PDE outputs."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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

    ``layers`` holds the nn.Linear layers in order; ``acts[k]`` is applied after ``layers[k]`` (every
    layer but the last). Inputs are affinely mapped from ``bounds`` to [-1, 1] by the fixed
    ``in_scale``/``in_shift`` buffers. With ``fourier_features=m > 0`` the scaled input first goes
    through a fixed random Fourier embedding [sin(2 pi B x), cos(2 pi B x)], B ~ N(0, sigma^2) of
    shape (m, in_dim): a frozen ``layers[0]`` (weights 2 pi [B; B], bias [0; pi/2]) with ``acts[0]``
    = sin, so every derivative engine handles it as an ordinary layer. It lets the network represent
    high frequencies that a plain MLP learns slowly (spectral bias; Tancik et al. 2020).

    With ``residual=True`` every hidden width -> width layer becomes a residual block
    h <- h + act(W h + b) (``skips[k]``: whether ``acts[k]`` adds its block's input), which keeps
    gradients alive through deep networks (He et al. 2016). Same parameters, same state_dict.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 32,
        depth: int = 3,
        activation: str = "tanh",
        bounds: list[tuple[float, float]] | None = None,
        fourier_features: int = 0,
        fourier_sigma: float | Sequence[float] = 1.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        _check_size(width=width, depth=depth)
        if not isinstance(fourier_features, int) or isinstance(fourier_features, bool) or fourier_features < 0:
            raise PinnConfigError(
                f"network.fourier_features={fourier_features!r} is invalid; it must be 0 (off) or a positive integer"
            )
        sigma = _per_input(fourier_sigma, in_dim)
        self.in_dim, self.out_dim, self.fourier_features = in_dim, out_dim, fourier_features
        self.act = make_activation(activation)
        sizes = [in_dim] + [width] * depth + [out_dim]
        acts: list[Activation] = [self.act] * depth
        if fourier_features:
            sizes.insert(1, 2 * fourier_features)
            acts.insert(0, Sin())
        if not isinstance(residual, bool):
            raise PinnConfigError(f"network.residual={residual!r} is invalid; it must be true or false")
        first_hidden = 1 if fourier_features else 0
        self.skips = tuple(residual and k > first_hidden for k in range(len(acts)))
        self.acts = acts  # a plain list: the activations have no parameters, state_dict stays as it was
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        if fourier_features:
            emb = self.layers[0]
            b = torch.randn(fourier_features, in_dim) * torch.tensor(sigma)
            with torch.no_grad():
                emb.weight.copy_(2 * math.pi * torch.cat([b, b]))
                emb.bias.copy_(torch.cat([torch.zeros(fourier_features), torch.full((fourier_features,), math.pi / 2)]))
            emb.requires_grad_(False)
        _register_scaling(self, in_dim, bounds)

    def describe(self) -> str:
        """One line for the run log, e.g. ``mlp 32x4 tanh, residual, fourier 64``."""
        first = 1 if self.fourier_features else 0
        width, depth = self.layers[first].out_features, len(self.layers) - 1 - first
        parts = [f"mlp {width}x{depth} {self.act.name}"]
        if any(self.skips):
            parts.append("residual")
        if first:
            parts.append(f"fourier {self.fourier_features}")
        return ", ".join(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.in_scale + self.in_shift
        for layer, act, skip in zip(self.layers[:-1], self.acts, self.skips):
            h = h + act(layer(h)) if skip else act(layer(h))
        return self.layers[-1](h)


def trainable(net: nn.Module) -> list[torch.Tensor]:
    """The parameters an optimizer updates (a Fourier embedding's fixed weights excluded)."""
    return [p for p in net.parameters() if p.requires_grad]


def _per_input(sigma, in_dim: int) -> list[float]:
    """``network.fourier_sigma`` as one positive scale per input (a number applies to all inputs)."""
    values = list(sigma) if isinstance(sigma, Sequence) and not isinstance(sigma, str) else [sigma]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values = values * in_dim
    if len(values) != in_dim or not all(v > 0 and math.isfinite(v) for v in values):
        raise PinnConfigError(
            f"network.fourier_sigma={sigma!r} is invalid; give a positive number or a list of {in_dim} (one per input)"
        )
    return values


class ModifiedMLP(nn.Module):
    """The modified MLP of Wang, Teng & Perdikaris (2021): two encoders U = act(W_u x + b_u) and
    V = act(W_v x + b_v) gate every hidden layer, h <- z * U + (1 - z) * V with z = act(W h + b).

    The gates carry the input into every layer multiplicatively, which eases the gradient
    imbalance between loss terms that stalls plain MLPs on stiff problems. Inputs are scaled to
    [-1, 1] like :class:`MLP`. The forward engine differentiates it through Taylor jets (jets.py).
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 32, depth: int = 3, activation: str = "tanh",
                 bounds: list[tuple[float, float]] | None = None) -> None:
        super().__init__()
        _check_size(width=width, depth=depth)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.act = make_activation(activation)
        self.encode_u, self.encode_v = nn.Linear(in_dim, width), nn.Linear(in_dim, width)
        self.layers = nn.ModuleList(nn.Linear(in_dim if k == 0 else width, width) for k in range(depth))
        self.out = nn.Linear(width, out_dim)
        for layer in (self.encode_u, self.encode_v, *self.layers, self.out):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        _register_scaling(self, in_dim, bounds)

    def describe(self) -> str:
        """One line for the run log, e.g. ``modified_mlp 32x3 tanh``."""
        return f"modified_mlp {self.out.in_features}x{len(self.layers)} {self.act.name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.in_scale + self.in_shift
        u, v = self.act(self.encode_u(h)), self.act(self.encode_v(h))
        for layer in self.layers:
            z = self.act(layer(h))
            h = v + z * (u - v)
        return self.out(h)


def _check_size(**sizes: int) -> None:
    for key, val in sizes.items():
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise PinnConfigError(f"network.{key}={val!r} is invalid; it must be a positive integer")


def _register_scaling(net: nn.Module, in_dim: int, bounds: list[tuple[float, float]] | None) -> None:
    """Buffers ``in_scale``/``in_shift`` mapping the box ``bounds`` (default [-1, 1]) to [-1, 1]."""
    lo = torch.tensor([b[0] for b in bounds] if bounds else [-1.0] * in_dim)
    hi = torch.tensor([b[1] for b in bounds] if bounds else [1.0] * in_dim)
    net.register_buffer("in_scale", 2.0 / (hi - lo))
    net.register_buffer("in_shift", -(hi + lo) / (hi - lo))


def _mlp(cfg, in_dim: int, out_dim: int, bounds, **fixed) -> MLP:
    keys = {"fourier_features": cfg.get("fourier_features", 0), "fourier_sigma": cfg.get("fourier_sigma", 1.0),
            "residual": cfg.get("residual", False), **fixed}
    return MLP(in_dim, out_dim, width=cfg.width, depth=cfg.depth, activation=cfg.activation, bounds=bounds, **keys)


def _fourier_mlp(cfg, in_dim: int, out_dim: int, bounds) -> MLP:
    m = cfg.get("fourier_features", 0)
    if isinstance(m, int) and not isinstance(m, bool) and m == 0:
        raise PinnConfigError("network=fourier_mlp needs network.fourier_features > 0 (the number of frequencies)")
    return _mlp(cfg, in_dim, out_dim, bounds)


def _resnet(cfg, in_dim: int, out_dim: int, bounds) -> MLP:
    if cfg.get("residual", True) is not True:
        raise PinnConfigError("network=resnet is an mlp with network.residual=true; use network=mlp for plain layers")
    return _mlp(cfg, in_dim, out_dim, bounds)


def _modified_mlp(cfg, in_dim: int, out_dim: int, bounds) -> ModifiedMLP:
    return ModifiedMLP(in_dim, out_dim, width=cfg.width, depth=cfg.depth, activation=cfg.activation, bounds=bounds)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp, "fourier_mlp": _fourier_mlp, "resnet": _resnet, "modified_mlp": _modified_mlp,
}


def build_network(cfg, in_dim: int, out_dim: int, bounds=None) -> nn.Module:
    """Build the network named by ``cfg.name`` (``configs/network/<name>.yaml``)."""
    name = cfg.get("name", "mlp")
    if name not in NETWORKS:
        raise PinnConfigError(f"network={name!r} is not known; choose from: {', '.join(NETWORKS)}")
    return NETWORKS[name](cfg, in_dim, out_dim, bounds)
