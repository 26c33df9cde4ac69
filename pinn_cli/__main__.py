"""``python -m pinn_cli ...`` is the same as ``pinn ...``."""
from .cli import main

if __name__ == "__main__":
    main()
