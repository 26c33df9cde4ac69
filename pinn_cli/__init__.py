"""pinn: a command-line PDE solver built on physics-informed neural networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pinn-cli")  # one place for the version: pyproject.toml
except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
    __version__ = "unknown"
