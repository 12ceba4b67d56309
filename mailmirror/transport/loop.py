"""An asyncio event loop in a background thread, for synchronous callers of async transports.

The engine is synchronous while asyncssh is async: a LoopThread owns one loop running in a
daemon thread, and run() hands it a coroutine and blocks until the result. It knows nothing
about SSH and translates no errors: callers do that at their own boundary.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """One event loop running in its own daemon thread until close()."""

    def __init__(self, name: str = "mailmirror-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result; exceptions propagate unchanged.

        Raises TimeoutError (after cancelling the coroutine) when `timeout` seconds pass, and
        RuntimeError when called from the loop's own thread, where waiting would deadlock.
        """
        return run_on(self.loop, coro, timeout)

    def close(self) -> None:
        """Stop the loop and join its thread; coroutines still pending are abandoned."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
           timeout: float | None = None) -> T:
    """Run `coro` on a loop that runs in another thread and wait for it (see LoopThread.run)."""
    if _in_loop(loop):
        coro.close()
        raise RuntimeError("run_on() called from the event loop's own thread")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
