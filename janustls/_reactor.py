"""The given reactor, or Twisted's global one: the one helper behind every `reactor=None`."""

from __future__ import annotations

from typing import Any

__all__ = ["reactor_or_global"]


def reactor_or_global(reactor: Any = None) -> Any:
    """`reactor` when given, else the global reactor (imported on first use: importing it installs
    the default reactor, and twistd or a test may install another one before that)."""
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as global_reactor

    return global_reactor
