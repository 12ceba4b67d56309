"""asyncssh, imported without the slow half of its library probe and without X.509: every SSH
run pays for its import.

On import, asyncssh looks for liboqs (post-quantum key exchange) with
`ctypes.util.find_library`, which on Linux asks `ldconfig -p` and then, when the library is not
in the loader's cache, compiles a probe with gcc and links one with ld, for each of two names:
36-40 ms of a 0.6 s no-change sync over SSH here. While asyncssh is imported, the probe is
answered by the stdlib's own ldconfig step alone: the cache the dynamic loader itself uses, so
a liboqs installed the usual way is still found. With LD_LIBRARY_PATH set (a liboqs outside the
cache) the full probe runs unchanged.

X.509 certificates in SSH (RFC 6187) are something OpenSSH does not have, and mailmirror speaks
to OpenSSH servers with OpenSSH's files; asyncssh's support for them imports cryptography's x509
package, 20-25 ms and about 1 MB of every run here. It is imported without it, as asyncssh is
where that package is missing: no X.509 algorithm is offered, and a known_hosts line holding an
X.509 subject is skipped. OpenSSH certificates (`@cert-authority`) are not X.509 and still work.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

X509 = "asyncssh.crypto.x509"


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


@contextmanager
def _without(module: str) -> Iterator[None]:
    """Make `import module` fail while asyncssh is imported (None in sys.modules does that)."""
    blocked = sys.modules.setdefault(module, None) is None
    try:
        yield
    finally:
        if blocked and sys.modules.get(module, 0) is None:
            del sys.modules[module]


with _loader_cache_only(), _without(X509):
    import asyncssh
    import asyncssh.encryption

__all__ = ["asyncssh"]
