"""selfsup: self-supervised visual representation learning, evaluated honestly with few labels."""

__version__ = "0.1.0"
