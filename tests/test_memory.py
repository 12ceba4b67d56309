"""share_one_heap: the threads of a copy allocate from one glibc malloc arena."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import ctypes, sys, threading
from mailmirror.memory import share_one_heap
if sys.argv[1] == "shared":
    share_one_heap()
kept = []
def work():
    kept.append([bytes(20000) for _ in range(200)])  # past pymalloc: glibc's malloc
threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                         check=True)
    return sum(line.startswith("Arena ") for line in run.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_threads_allocate_from_one_arena():
    assert arenas("default") > 1  # what the call changes: one arena a thread
    assert arenas("shared") == 1
