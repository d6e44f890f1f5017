"""The stateless HTTP gateway (see docs/structure.md for how a request travels through it)."""

__all__ = ["VERSION"]

VERSION = "0.1.0"
