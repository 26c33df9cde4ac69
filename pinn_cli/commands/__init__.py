"""Subcommands of the ``pinn`` CLI; ``train`` is the only Hydra entry point."""
