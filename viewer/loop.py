"""Pick and run the asyncio event loop: uvloop where installed, the standard loop otherwise."""
from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any, Callable, Coroutine

log = logging.getLogger(__name__)


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """``auto`` prefers uvloop; ``uvloop`` insists on it; ``asyncio`` is the standard loop."""
    if name == "asyncio" or (name == "auto" and importlib.util.find_spec("uvloop") is None):
        return asyncio.new_event_loop
    import uvloop  # only here: the viewer runs without it

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, int], loop: str = "auto") -> int:
    factory = loop_factory(loop)
    log.debug("event=loop name=%s", factory.__module__)
    # asyncio.Runner(loop_factory=...) is 3.11+; this is the same for 3.10.
    ev = factory()
    try:
        asyncio.set_event_loop(ev)
        return ev.run_until_complete(main)
    finally:
        try:
            ev.run_until_complete(ev.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            ev.close()
