"""The asyncio loop ASGI applications need: Twisted's asyncio reactor, installed by janustls.

ASGI apps (FastAPI, Starlette) await asyncio; Twisted's `AsyncioSelectorReactor` runs Twisted
on an asyncio loop, so requests go from the TLS layer to the app with no thread hop (Daphne
does the same).  A reactor is chosen once per process, before anything imports
`twisted.internet.reactor`: the twistd plugin and `janustls demo` install the asyncio
reactor when the definitions have an `asgi` rule, so `twistd -n janustls --port-def ports.ini`
needs no `-r asyncio` (which also works).  Every port type runs under it unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import asyncioreactor  # importing it installs nothing; `install()` does

__all__ = ["uses_asgi", "ensure_asyncio_reactor", "AsyncioReactorNeeded"]


class AsyncioReactorNeeded(RuntimeError):
    """`asgi` rules, and another reactor already installed."""


def uses_asgi(web: Mapping[str, Sequence[Any]]) -> bool:
    """Whether any `[web:]` table has an `ON ... = asgi ...` rule (read from the raw lines)."""
    for lines in web.values():
        for line in lines:
            value = str(getattr(line, "value", "")).strip()
            if value.split(None, 1)[:1] and value.split(None, 1)[0].lower() == "asgi":
                return True
    return False


def ensure_asyncio_reactor() -> None:
    """Install Twisted's asyncio reactor, unless it is the one installed; another one: an error."""
    reactor = sys.modules.get("twisted.internet.reactor")  # the installed reactor, without installing one
    if reactor is None:
        asyncioreactor.install()
        return
    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        raise AsyncioReactorNeeded(f"asgi rules need Twisted's asyncio reactor, and {type(reactor).__name__} is already installed "
                                   "(twistd: -r asyncio)")  # fmt: skip
