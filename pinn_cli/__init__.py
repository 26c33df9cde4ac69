"""pinn: a command-line PDE solver built on physics-informed neural networks."""

__version__ = "0.1.0"
