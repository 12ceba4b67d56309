"""`--slow-link RATE`: the benchmark run again inside a network namespace of its own whose
loopback is shaped to RATE (`tc tbf`), so every SSH case goes through a line of that speed.

Issue 3 asks for sync "fast over slow links": the backup box of the classic setup sits on a home
DSL line. Only bandwidth is shaped (this kernel has no netem for latency); the loopback's MTU is
set to 1500 so that tbf's burst holds a whole packet. The namespace is made before the run and
removed after it; nothing outside it is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

INSIDE = "BENCH_SLOW_LINK"
"""Set to the rate in the environment of the run inside the namespace."""
REPO = Path(__file__).resolve().parent.parent


def check_slow_link() -> str | None:
    """Why a shaped namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "--slow-link needs root (it creates a network namespace)"
    missing = [tool for tool in ("ip", "tc") if not shutil.which(tool)]
    return f"{', '.join(missing)} not found (apt-get install iproute2)" if missing else None


def inside() -> str | None:
    """The rate when this process runs inside the shaped namespace, else None."""
    return os.environ.get(INSIDE) or None


def run_inside(rate: str, argv: list[str]) -> int:
    """Run `python -m bench.run ARGV` in a fresh namespace shaped to `rate`; its exit status."""
    name = f"mmbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "mtu", "1500", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root",
                        "tbf", "rate", rate, "burst", "32kb", "latency", "400ms"], check=True)
        return subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-m", "bench.run", *argv],
            env=dict(os.environ, **{INSIDE: rate}), cwd=REPO).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
