"""asyncssh, imported without the slow half of its library probe: every SSH run pays it.

On import, asyncssh looks for liboqs (post-quantum key exchange) with
`ctypes.util.find_library`, which on Linux asks `ldconfig -p` and then, when the library is not
in the loader's cache, compiles a probe with gcc and links one with ld, for each of two names:
36-40 ms of a 0.6 s no-change sync over SSH here. While asyncssh is imported, the probe is
answered by the stdlib's own ldconfig step alone: the cache the dynamic loader itself uses, so
a liboqs installed the usual way is still found. With LD_LIBRARY_PATH set (a liboqs outside the
cache) the full probe runs unchanged.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def _loader_cache_only() -> Iterator[None]:
    from_cache: Callable[[str], str | None] | None = getattr(
        ctypes.util, "_findSoname_ldconfig", None)
    if sys.platform != "linux" or from_cache is None or os.environ.get("LD_LIBRARY_PATH"):
        yield
        return
    full = ctypes.util.find_library
    ctypes.util.find_library = from_cache
    try:
        yield
    finally:
        ctypes.util.find_library = full


with _loader_cache_only():
    import asyncssh
    import asyncssh.encryption

__all__ = ["asyncssh"]
