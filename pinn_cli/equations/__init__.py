"""Built-in equations: one module each, selected by ``configs/equation/<name>.yaml``."""
