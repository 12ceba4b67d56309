"""asyncssh imported through mailmirror.transport.sshlib: no gcc/ld probe, same answer.

Each case runs in a fresh interpreter, since asyncssh probes once, when first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the probe is Linux-only")

PROBE = """
import ctypes.util, json
slow = []
for step in ("_findLib_gcc", "_findLib_ld"):
    real = getattr(ctypes.util, step)
    def record(name, real=real, step=step):
        slow.append(step)
        return real(name)
    setattr(ctypes.util, step, record)
full = ctypes.util.find_library
import mailmirror.transport.sshlib
import asyncssh.crypto.pq as pq
during = list(slow)
expected = full("oqs") or full("liboqs")
print(json.dumps({"slow_steps": during, "found": pq._oqs_lib, "expected": expected,
                  "restored": ctypes.util.find_library is full}))
"""


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return json.loads(out)


def test_asyncssh_finds_what_the_full_probe_finds_without_gcc_or_ld() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    got = _probe(env)
    assert got["slow_steps"] == []
    assert got["found"] == got["expected"]
    assert got["restored"]


def test_with_ld_library_path_the_full_probe_runs() -> None:
    got = _probe({**os.environ, "LD_LIBRARY_PATH": "/nonexistent"})
    # without liboqs in the loader's cache, find_library goes on to gcc and ld
    if got["expected"] is None:
        assert "_findLib_ld" in got["slow_steps"]
    assert got["found"] == got["expected"]
    assert got["restored"]


def test_the_loader_cache_step_answers_like_find_library_for_a_cached_library() -> None:
    import ctypes.util

    assert ctypes.util._findSoname_ldconfig("c") == ctypes.util.find_library("c")  # type: ignore[attr-defined]


NO_X509 = """
import json, sys
import mailmirror.transport.sshlib
from mailmirror.transport.sshlib import asyncssh
algs = asyncssh.public_key.get_x509_certificate_algs()
print(json.dumps({"x509_algs": [a.decode() for a in algs],
                  "loaded": sorted(m for m in sys.modules if m.startswith("cryptography.x509")),
                  "left_blocked": [m for m, v in sys.modules.items() if v is None]}))
"""


def test_asyncssh_comes_without_x509_and_nothing_stays_blocked() -> None:
    out = subprocess.run([sys.executable, "-c", NO_X509], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    got = json.loads(out)
    assert got["x509_algs"] == []
    assert got["loaded"] == []
    assert got["left_blocked"] == []
