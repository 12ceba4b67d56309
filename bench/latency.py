"""Live mode's benchmark (issue 4): how soon a delivery on one side is visible on the other
while `mailmirror watch` runs over a loopback sshd, how fast a 5,000-message flag burst
converges, and how much CPU the watch and its agents use while nothing happens.

    .venv/bin/python -m bench.latency                       # 100,000 messages: ~5 min
    .venv/bin/python -m bench.latency --messages 2000 --deliveries 10 --burst 500 \
        --idle-seconds 3                                    # the CI size: ~30 s

A = the local maildir ("laptop"), B = a maildir behind the sshd. Steps, in one watch run:
generate the tree into A plus a `Burst` folder of --burst unread messages, copy it to B with
`mailmirror sync`, start `mailmirror watch A B`, measure idle CPU of the watch process and of
every process under sshd (the agents) over --idle-seconds, then make --deliveries deliveries
on each side at random intervals (tmp/ + rename into new/, as an MDA does) and time until each
file is in the other side's new/, then mark every Burst message read (a rename each, as a mail
client does) and time until B shows them all read. Exit status: 0 fine; 1 a step failed; 2 a
tool missing; 3 a target missed at 100,000 messages (below that the targets are information).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.gen import generate, make_folder
from bench.ssh import Ssh, check_ssh, loopback

REPO = Path(__file__).resolve().parent.parent
FULL_SIZE = 100_000
TICK = os.sysconf("SC_CLK_TCK")


def log(line: str) -> None:
    print(f"[latency] {line}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=FULL_SIZE)
    p.add_argument("--deliveries", type=int, default=200, help="per side")
    p.add_argument("--burst", type=int, default=5000)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--max-gap", type=float, default=0.5,
                   help="deliveries come at uniform random gaps in [0, MAX_GAP] seconds")
    p.add_argument("--root", type=Path, default=Path("/dev/shm/mailmirror-latency"))
    p.add_argument("--mailmirror", default=str(REPO / ".venv" / "bin" / "mailmirror"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (sshd's sessions and the agents they run)."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text()
                                      .rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append(child)
                frontier.append(child)
    return found


def deliver(root: Path, name: str) -> None:
    tmp = root / "tmp" / name
    tmp.write_bytes(f"From: bench@example.net\nSubject: {name}\n\nlatency probe\n".encode())
    os.rename(tmp, root / "new" / name)


class Watch:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"watch never logged {text!r}:\n" + "\n".join(self.lines))
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


def latencies(a: Path, b: Path, per_side: int, max_gap: float, seed: int) -> list[float]:
    """Deliver `per_side` messages into each side at random gaps; seconds until each is seen."""
    rng = random.Random(seed)
    pending: dict[Path, float] = {}
    seen: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() or pending:
            with lock:
                items = list(pending.items())
            for path, start in items:
                if path.exists():
                    seen.append(time.monotonic() - start)
                    with lock:
                        del pending[path]
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    sides = [(a, b)] * per_side + [(b, a)] * per_side
    rng.shuffle(sides)
    for i, (here, there) in enumerate(sides):
        time.sleep(rng.uniform(0, max_gap))
        name = f"{1800000000 + i}.M{i}P{os.getpid()}.latency"
        with lock:
            pending[there / "new" / name] = time.monotonic()
        deliver(here, name)
    done.set()
    poller.join(60)
    if pending:
        raise RuntimeError(f"{len(pending)} deliveries never arrived: {sorted(pending)[:3]}")
    return seen


def burst(a: Path, b: Path, timeout: float = 120) -> float:
    """Mark every message of A's Burst folder read; seconds until B shows them all read."""
    folder_a, folder_b = a / ".Burst" / "cur", b / ".Burst" / "cur"
    names = sorted(os.listdir(folder_a))
    start = time.monotonic()
    for name in names:
        os.rename(folder_a / name, folder_a / (name + "S"))
    while time.monotonic() - start < timeout:
        try:
            there = os.listdir(folder_b)
        except FileNotFoundError:
            there = []
        if len(there) == len(names) and all(n.endswith(":2,S") for n in there):
            return time.monotonic() - start
        time.sleep(0.01)
    raise RuntimeError("the burst did not converge")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if why := check_ssh():
        log(f"error: {why}")
        return 2
    root: Path = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    a, b, state = root / "A", root / "B", root / "state.db"
    log(f"generating {args.messages} messages and a Burst folder of {args.burst}")
    generate(a, args.messages, args.seed)
    burst_dir = make_folder(a, "Burst")
    for i in range(args.burst):
        (burst_dir / "cur" / f"{1700000000 + i}.M{i}P1.burst:2,").write_bytes(
            f"Subject: burst {i}\n\nunread\n".encode())
    env = dict(os.environ, MAILMIRROR_STATE=str(state))
    try:
        with loopback(root / "sshd") as ssh:
            result = run(args, ssh, a, b, env)
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report(args, result)


def run(args: argparse.Namespace, ssh: Ssh, a: Path, b: Path,
        env: dict[str, str]) -> dict[str, float]:
    e = ssh.ssh
    common = [*e.mailmirror_args, "--remote-command", f"{args.mailmirror} agent"]
    log("first copy to B over SSH")
    done = subprocess.run([args.mailmirror, "sync", str(a), ssh.address(b), *common],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"first sync failed: {done.stderr}")
    past = time.time() - 60
    for tree in (a, b):  # as after a cron run long ago: folder times are old and trusted
        for path, _dirs, _ in os.walk(tree):
            if os.path.basename(path) in ("cur", "new"):
                os.utime(path, (past, past))
    watch = Watch([args.mailmirror, "watch", str(a), ssh.address(b), *common], env)
    try:
        watch.wait_for("connected", 60)
        time.sleep(3)  # the start-up sync and the settling of its own events
        log(f"idle CPU over {args.idle_seconds:g} s")
        listener = ssh.server.process.pid
        agents = descendants(listener)
        before = cpu_seconds(watch.proc.pid), sum(cpu_seconds(p) for p in agents)
        time.sleep(args.idle_seconds)
        after = cpu_seconds(watch.proc.pid), sum(cpu_seconds(p) for p in agents)
        idle_client = 100 * (after[0] - before[0]) / args.idle_seconds
        idle_agents = 100 * (after[1] - before[1]) / args.idle_seconds
        log(f"{args.deliveries} deliveries per side")
        seen = latencies(a, b, args.deliveries, args.max_gap, args.seed)
        log(f"burst of {args.burst} flag changes")
        burst_s = burst(a, b)
        rc = watch.stop()
        if rc != 0:
            raise RuntimeError(f"watch exited {rc}:\n" + "\n".join(watch.lines))
    finally:
        if watch.proc.poll() is None:
            watch.proc.kill()
    return {"messages": args.messages, "deliveries": len(seen), "p50_s": percentile(seen, 0.5),
            "p99_s": percentile(seen, 0.99), "max_s": max(seen),
            "mean_s": statistics.fmean(seen), "burst": args.burst, "burst_s": burst_s,
            "idle_cpu_client_pct": idle_client, "idle_cpu_agents_pct": idle_agents,
            "idle_seconds": args.idle_seconds}


def report(args: argparse.Namespace, r: dict[str, float]) -> int:
    targets = [
        ("p50 visibility < 0.5 s", r["p50_s"] < 0.5, f"{r['p50_s']:.3f} s"),
        ("p99 visibility < 2 s", r["p99_s"] < 2.0, f"{r['p99_s']:.3f} s"),
        (f"{r['burst']:.0f}-message flag burst < 10 s", r["burst_s"] < 10,
         f"{r['burst_s']:.2f} s"),
        ("idle CPU < 1% of a core (client)", r["idle_cpu_client_pct"] < 1,
         f"{r['idle_cpu_client_pct']:.2f}%"),
        ("idle CPU < 1% of a core (agents)", r["idle_cpu_agents_pct"] < 1,
         f"{r['idle_cpu_agents_pct']:.2f}%"),
    ]
    judged = args.messages >= FULL_SIZE and args.burst >= 5000
    if args.json:
        print(json.dumps(r | {"targets": {name: ok for name, ok, _ in targets},
                              "judged": judged}))
    else:
        print(f"mailmirror watch over SSH on loopback, {r['messages']:.0f} messages watched")
        print(f"{r['deliveries']:.0f} deliveries: p50 {r['p50_s']:.3f} s, p99 "
              f"{r['p99_s']:.3f} s, max {r['max_s']:.3f} s, mean {r['mean_s']:.3f} s")
        print(f"burst of {r['burst']:.0f} flag changes: {r['burst_s']:.2f} s")
        print(f"idle CPU over {r['idle_seconds']:g} s: client {r['idle_cpu_client_pct']:.2f}%, "
              f"agents {r['idle_cpu_agents_pct']:.2f}% of one core")
        print("\nTargets" + ("" if judged else " (information only below 100,000 messages)")
              + ":")
        for name, ok, value in targets:
            print(f"  {'PASS' if ok else 'FAIL'}  {name:40} {value}")
    missed = [name for name, ok, _ in targets if not ok]
    return 3 if judged and missed else 0


if __name__ == "__main__":
    sys.exit(main())
