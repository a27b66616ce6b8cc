"""The method registry: a plain dict from name to Method class. A new method is one file plus one line here."""

from __future__ import annotations

from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    SimCLR.name: SimCLR,
}

__all__ = ["METHODS", "Method", "MethodConfig"]
