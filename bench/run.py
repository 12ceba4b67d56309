"""The benchmark command: mailmirror beside unison, rsync, doveadm sync and mbsync on identical
trees.

For every repeat and tool, one chain on a fresh copy of the generated tree: first copy A -> B
(B absent), then a no-change sync, then the delta sync; each timed, each checked against what the
trees must hold. With `--ssh` the same chain runs again with B behind a loopback sshd
(`bench.ssh`). Exit status: 0 fine, 1 a mailmirror run failed or left the trees wrong, 2 usage
error or a tool missing, 3 a target of issue 2 or 3 failed (judged at 100,000 messages only).

Run it as `.venv/bin/python -m bench.run` or `python bench/run.py`; `--help` lists the options.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gen, slowlink  # noqa: E402
from bench.maildir import (  # noqa: E402
    SUBDIRS,
    Identify,
    MessageIds,
    State,
    by_name,
    iter_folders,
    scan,
    split_name,
    verify,
)
from bench.measure import Measurement, check_gnu_time, measure  # noqa: E402
from bench.report import MM, MM_TOOLS, Report, Result, case_names  # noqa: E402
from bench.ssh import check_ssh, loopback  # noqa: E402
from bench.tools import Local, Pair, Tool, Transport, make_tools  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("mailmirror", "mailmirror-plain", "mailmirror-sftp", "unison", "rsync", "doveadm",
         "mbsync")
TIMEOUT = 1800.0
BACKDATE = 10.0
"""Seconds by which cur/ and new/ mtimes are set back before the no-change runs: mailmirror
trusts a directory mtime only when it is older than its 2 s safety margin."""
HELP_RUNS = 5


def default_root() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
    return base / "mailmirror-bench"


def default_mailmirror() -> str:
    venv = REPO / ".venv" / "bin" / "mailmirror"
    return str(venv) if venv.exists() else "mailmirror"


def compile_sources() -> None:
    """Write the bytecode of the checkout's packages, as installing a wheel does.

    An editable install leaves that to the first import, which never happens where
    PYTHONDONTWRITEBYTECODE is set (this machine's environment sets it): every measured run
    then compiled each module edited since its .pyc was written, 10-20 ms per run.
    """
    for package in ("mailmirror", "failover"):
        compileall.compile_dir(REPO / package, quiet=2)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (e.g. tmpfs, ext4), from /proc/self/mountinfo."""
    target, best, fstype = str(path.resolve()), "", "unknown"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return fstype
    for line in lines:
        fields, _, rest = line.partition(" - ")
        mount = fields.split()[4]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, rest.split()[0]
    return fstype


def ensure_tree(root: Path, messages: int, seed: int) -> tuple[Path, int]:
    """The generated tree for these parameters, reused if an earlier run kept it (--keep-tree)
    and the generator is unchanged. Returns its path and total size in bytes."""
    tree = root / f"tree-{messages}-seed{seed}"
    marker = root / f"{tree.name}.json"
    stamp = hashlib.sha256(Path(gen.__file__).read_bytes()).hexdigest()
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("generator") == stamp and tree.is_dir():
            return tree, saved["bytes"]
    marker.unlink(missing_ok=True)
    shutil.rmtree(tree, ignore_errors=True)
    log(f"generating {messages:,} messages in {tree} ...")
    summary = gen.generate(tree, messages, seed)
    marker.write_text(json.dumps({"generator": stamp, "bytes": summary.bytes}))
    return tree, summary.bytes


def backdate(pair: Pair, seconds: float) -> None:
    """Set every cur/ and new/ mtime of both trees `seconds` into the past."""
    when = time.time() - seconds
    for tree in (pair.a, pair.b):
        for _, path in iter_folders(tree):
            for sub in SUBDIRS:
                os.utime(path / sub, (when, when))


def differs(notes: list[str]) -> str:
    """The check column's note for a tool whose expected result differs from a mirror's."""
    return "differs: " + "; ".join(notes) if notes else ""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    """One benchmark run: the tree, the delta, and every (transport, tool)'s results."""

    def __init__(self, tree: Path, work: Path, seed: int) -> None:
        self.tree, self.work = tree, work
        self.listing = listing = scan(tree)
        self.before: State = listing.state()
        self.delta = gen.plan_delta(listing, seed)
        self.transports: list[str] = []
        self.results: dict[tuple[str, str], Result] = {}
        self.kept: Path | None = None
        self.load_max = 0.0
        self.message_ids: MessageIds | None = None

    def identify(self, tool: Tool) -> Identify:
        """How the checks find a tool's messages: by name, or by Message-ID for a tool that
        writes copies under names of its own (the map is built on first use)."""
        if not tool.renames:
            return by_name
        if self.message_ids is None:
            self.message_ids = MessageIds()
            self.message_ids.add_tree(self.tree, self.listing)
            for msg in self.delta.a.new + self.delta.b.new:
                self.message_ids.add(msg.data, split_name(msg.name)[0])
        return self.message_ids

    def add(self, transport: Transport, tools: list[Tool]) -> list[Tool]:
        """Add the cases of one transport for the tools that support it; return those tools."""
        self.transports.append(transport.label)
        first, nochange, changed = case_names(transport.label)
        chosen = [t for t in tools if t.supports(transport)]
        for tool in chosen:
            for case in (first, nochange, changed):
                result = Result(case, tool.name, note=differs(tool.differs()))
                if case == changed and not tool.two_way:
                    result.note = "n/a (one-way)"
                self.results[(case, tool.name)] = result
        return chosen

    def run(self, tool: Tool, transport: Transport, pair: Pair) -> Measurement:
        """One sync; over SSH also the remote side's peak (`Measurement.remote_mb`)."""
        cmd = tool.command(pair, transport)
        time.sleep(tool.pause)
        transport.before_run(tool.kept)
        m = measure(cmd.argv, cmd.env, TIMEOUT)
        m = dataclasses.replace(m, remote_mb=transport.remote_peak_mb(tool.kept))
        self.load_max = max(self.load_max, os.getloadavg()[0])
        return m

    def timed(
        self,
        case: str,
        tool: Tool,
        transport: Transport,
        pair: Pair,
        want: State,
        run: int,
        idle: bool = False,
        want_b: State | None = None,
    ) -> bool:
        """Time one sync and check that A holds `want` and B `want_b` (by default the same)
        afterwards; False when the chain should stop (the tool failed, or mailmirror left the
        trees wrong: those are kept, see `keep`)."""
        m = self.run(tool, transport, pair)
        result = self.results[(case, tool.name)]
        failure = m.failure()
        if failure:
            result.problems.append((run, failure))
            log(f"  {tool.name:15} {case:20} run {run}: FAILED {failure}")
            return False
        problems = verify(pair.a, pair.b, want, want_b, self.identify(tool), tool.added_header)
        if idle and (why := tool.idle_problem(m.stdout)):
            problems.append(why)
        result.seconds.append(m.seconds)
        result.peaks_mb.append(m.peak_mb)
        if m.remote_mb is not None:
            result.remote_peaks_mb.append(m.remote_mb)
        result.problems += [(run, p) for p in problems]
        verdict = f"{len(problems)} PROBLEMS" if problems else "ok"
        timing = f"{m.seconds:7.3f} s {m.peak_mb:6.1f} MB"
        if m.remote_mb is not None:
            timing += f" (remote {m.remote_mb:5.1f} MB)"
        log(f"  {tool.name:15} {case:20} run {run}: {timing} {verdict}")
        if problems and tool.name in MM_TOOLS:
            self.keep(pair, case, run, result)
            return False
        return True

    def keep(self, pair: Pair, case: str, run: int, result: Result) -> None:
        """Keep the trees and state of mailmirror's first wrong run for inspection."""
        if self.kept is not None:
            return
        slug = case.replace(",", "").replace(" ", "-")
        self.kept = self.work.parent / f"failed-{slug}-{result.tool}-run{run}"
        shutil.rmtree(self.kept, ignore_errors=True)
        pair.root.rename(self.kept)
        result.problems.append((run, f"trees and state kept in {self.kept}"))

    def chain(self, tool: Tool, transport: Transport, run: int) -> None:
        """First copy, no change, delta: one fresh pair of trees, three timed syncs."""
        pair = Pair(self.work / transport.label / tool.name)
        shutil.rmtree(pair.root, ignore_errors=True)
        pair.root.mkdir(parents=True)
        try:
            subprocess.run(["cp", "-a", str(self.tree), str(pair.a)], check=True)
            tool.prepare(pair)
            self.steps(tool, transport, pair, run)
        finally:
            tool.finish()
            shutil.rmtree(pair.root, ignore_errors=True)

    def steps(self, tool: Tool, transport: Transport, pair: Pair, run: int) -> None:
        first, nochange, changed = case_names(transport.label)
        if not self.timed(first, tool, transport, pair, self.before, run):
            return
        backdate(pair, BACKDATE)
        settle = self.run(tool, transport, pair)  # not timed: records the backdated mtimes
        if why := settle.failure() or tool.idle_problem(settle.stdout):
            self.results[(nochange, tool.name)].problems.append((run, f"settling sync: {why}"))
            return
        if not self.timed(nochange, tool, transport, pair, self.before, run, idle=True):
            return
        if not tool.two_way:
            return
        identify = self.identify(tool)
        lost = gen.apply_side(pair.a, self.delta.a, identify)
        lost += gen.apply_side(pair.b, self.delta.b, identify)
        tool.prepare(pair)
        result = self.results[(changed, tool.name)]
        if lost:
            result.problems.append(
                (run, f"{len(lost)} messages to change were not found before the delta")
            )
        want_a, want_b, notes = tool.expected(self.before, self.delta)
        result.note = differs(notes)
        self.timed(changed, tool, transport, pair, want_a, run, want_b=want_b)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="mailmirror beside unison, rsync, doveadm sync, mbsync (see bench/README.md)",
    )
    parser.add_argument("--messages", type=int, default=100_000, help="tree size (>= 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; medians are shown")
    parser.add_argument("--root", type=Path, default=default_root(), help="work directory")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument("--mailmirror", default=default_mailmirror(), help="mailmirror executable")
    parser.add_argument(
        "--keep-tree", action="store_true", help="keep the generated tree for reuse"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument(
        "--ssh",
        action="store_true",
        help="also run the cases over SSH, with B behind a loopback sshd (issue 3)",
    )
    parser.add_argument("--no-local", action="store_true", help="skip the local cases")
    parser.add_argument(
        "--slow-link",
        metavar="RATE",
        help="run the SSH cases through a line of RATE (tc rate, e.g. 10mbit): a network "
        "namespace of its own with a shaped loopback; needs root; implies --ssh --no-local",
    )
    args = parser.parse_args(argv)
    if args.slow_link:
        if not re.fullmatch(r"\d+(\.\d+)?[kmg]?bit", args.slow_link):
            parser.error("--slow-link takes a rate like 10mbit, 512kbit or 1gbit")
        args.ssh = args.no_local = True
    if args.messages < 1000 or args.repeat < 1:
        parser.error("--messages must be >= 1000 and --repeat >= 1")
    if args.no_local and not args.ssh:
        parser.error("--no-local needs --ssh")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.slow_link and not slowlink.inside():
        if why := slowlink.check_slow_link():
            log(f"error: cannot run {why}")
            return 2
        return slowlink.run_inside(args.slow_link, sys.argv[1:] if argv is None else argv)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    try:
        tools = make_tools([t for t in args.tools.split(",") if t], args.mailmirror)
    except ValueError as e:
        log(f"error: {e}")
        return 2
    missing = [f"{t.name}: {why}" for t in tools if (why := t.check_ready())]
    if why := check_gnu_time():
        missing.append(why)
    if args.ssh and (why := check_ssh()):
        missing.append(why)
    if missing:
        log("error: cannot run " + "; ".join(missing))
        return 2
    compile_sources()
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("failed-*"):  # kept by an earlier run (see Bench.keep)
        shutil.rmtree(stale)
    tree, total_bytes = ensure_tree(root, args.messages, args.seed)
    bench = Bench(tree, root / "work", args.seed)
    ssh_connect: list[float] = []
    with contextlib.ExitStack() as stack:
        plan: list[tuple[Transport, list[Tool]]] = []
        if not args.no_local:
            local = Local()
            plan.append((local, bench.add(local, tools)))
        if args.ssh:
            ssh = stack.enter_context(loopback(root / "sshd"))
            plan.append((ssh, bench.add(ssh, tools)))
            ssh_connect = ssh.connect_seconds()
        for run in range(1, args.repeat + 1):
            for transport, chosen in plan:
                for tool in chosen:
                    bench.chain(tool, transport, run)
    help_seconds = []
    if any(t.name == MM for t in tools):
        for _ in range(HELP_RUNS):
            m = measure([args.mailmirror, "--help"], dict(os.environ), 60)
            if m.returncode == 0:
                help_seconds.append(m.seconds)
    shutil.rmtree(root / "work", ignore_errors=True)
    shutil.rmtree(root / "sshd", ignore_errors=True)
    if not args.keep_tree:
        shutil.rmtree(tree)
        (root / f"{tree.name}.json").unlink()
    report = Report(
        messages=args.messages,
        total_bytes=total_bytes,
        folders=len(gen.FOLDERS),
        seed=args.seed,
        repeat=args.repeat,
        root=str(root),
        filesystem=filesystem_of(root),
        transports=bench.transports,
        results=bench.results,
        help_seconds=help_seconds,
        ssh_connect_seconds=ssh_connect,
        slow_link=slowlink.inside(),
        load=(load_start, os.getloadavg()[0]),
        load_max=max(bench.load_max, load_start),
        seconds_total=time.perf_counter() - started,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    if not report.correct():
        return 1
    return 3 if report.targets_failed() else 0


if __name__ == "__main__":
    sys.exit(main())
