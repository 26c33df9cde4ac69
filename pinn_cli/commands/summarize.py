"""``pinn summarize``: not built yet."""
from __future__ import annotations

from ..errors import PinnError


def main(argv: list[str]) -> None:
    raise PinnError("pinn summarize is not available yet")
