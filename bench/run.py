"""The benchmark command: mailmirror beside unison, rsync and doveadm sync on identical trees.

For every repeat and tool, one chain on a fresh copy of the generated tree: first copy A -> B
(B absent), then a no-change sync, then the delta sync; each timed, each checked against what the
trees must hold. Exit status: 0 fine, 1 a mailmirror run failed or left the trees wrong,
2 usage error or a tool missing, 3 a target of issue 2 failed (judged at 100,000 messages only).

Run it as `.venv/bin/python -m bench.run` or `python bench/run.py`; `--help` lists the options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gen  # noqa: E402
from bench.maildir import SUBDIRS, State, iter_folders, scan, verify  # noqa: E402
from bench.measure import check_gnu_time, measure  # noqa: E402
from bench.report import MM, Report, Result  # noqa: E402
from bench.tools import Local, Pair, Tool, Transport, make_tools  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("mailmirror", "unison", "rsync", "doveadm")
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


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    """One benchmark run: the tree, the delta, and every tool's results."""

    def __init__(self, tree: Path, work: Path, seed: int, transport: Transport) -> None:
        self.tree, self.work, self.transport = tree, work, transport
        listing = scan(tree)
        self.before: State = listing.state()
        self.delta = gen.plan_delta(listing, seed)
        self.after: State = self.delta.expected(self.before)
        label = transport.label
        self.first, self.nochange, self.changed = (
            f"first copy, {label}",
            f"no change, {label}",
            f"delta, {label}",
        )
        self.results: dict[tuple[str, str], Result] = {}
        self.kept: Path | None = None

    @property
    def cases(self) -> list[str]:
        return [self.first, self.nochange, self.changed]

    def add_tool(self, tool: Tool) -> None:
        for case in self.cases:
            result = Result(case, tool.name)
            if case == self.changed and not tool.two_way:
                result.note = "n/a (one-way)"
            self.results[(case, tool.name)] = result

    def timed(
        self, case: str, tool: Tool, pair: Pair, want: State, run: int, idle: bool = False
    ) -> bool:
        """Time one sync and check the trees afterwards; False when the chain should stop (the
        tool failed, or mailmirror left the trees wrong: those are kept, see `keep`)."""
        cmd = tool.command(pair, self.transport)
        m = measure(cmd.argv, cmd.env, TIMEOUT)
        result = self.results[(case, tool.name)]
        failure = m.failure()
        if failure:
            result.problems.append((run, failure))
            log(f"  {tool.name:10} {case:20} run {run}: FAILED {failure}")
            return False
        problems = verify(pair.a, pair.b, want)
        if idle and (why := tool.idle_problem(m.stdout)):
            problems.append(why)
        result.seconds.append(m.seconds)
        result.peaks_mb.append(m.peak_mb)
        result.problems += [(run, p) for p in problems]
        verdict = f"{len(problems)} PROBLEMS" if problems else "ok"
        timing = f"{m.seconds:7.3f} s {m.peak_mb:6.1f} MB"
        log(f"  {tool.name:10} {case:20} run {run}: {timing} {verdict}")
        if problems and tool.name == MM:
            self.keep(pair, case, run, result)
            return False
        return True

    def keep(self, pair: Pair, case: str, run: int, result: Result) -> None:
        """Keep the trees and state of mailmirror's first wrong run for inspection."""
        if self.kept is not None:
            return
        self.kept = self.work.parent / f"failed-{case.split(',')[0].replace(' ', '-')}-run{run}"
        shutil.rmtree(self.kept, ignore_errors=True)
        pair.root.rename(self.kept)
        result.problems.append((run, f"trees and state kept in {self.kept}"))

    def chain(self, tool: Tool, run: int) -> None:
        """First copy, no change, delta: one fresh pair of trees, three timed syncs."""
        pair = Pair(self.work / tool.name)
        shutil.rmtree(pair.root, ignore_errors=True)
        pair.root.mkdir(parents=True)
        try:
            subprocess.run(["cp", "-a", str(self.tree), str(pair.a)], check=True)
            tool.prepare(pair)
            self.steps(tool, pair, run)
        finally:
            shutil.rmtree(pair.root, ignore_errors=True)

    def steps(self, tool: Tool, pair: Pair, run: int) -> None:
        if not self.timed(self.first, tool, pair, self.before, run):
            return
        backdate(pair, BACKDATE)
        cmd = tool.command(pair, self.transport)
        settle = measure(cmd.argv, cmd.env, TIMEOUT)  # not timed: records the backdated mtimes
        if why := settle.failure() or tool.idle_problem(settle.stdout):
            self.results[(self.nochange, tool.name)].problems.append((run, f"settling sync: {why}"))
            return
        if not self.timed(self.nochange, tool, pair, self.before, run, idle=True):
            return
        if not tool.two_way:
            return
        lost = gen.apply_side(pair.a, self.delta.a) + gen.apply_side(pair.b, self.delta.b)
        tool.prepare(pair)
        if lost:
            self.results[(self.changed, tool.name)].problems.append(
                (run, f"{len(lost)} messages to change were not found before the delta")
            )
        self.timed(self.changed, tool, pair, self.after, run)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="mailmirror beside unison, rsync and doveadm sync (see bench/README.md)",
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
    args = parser.parse_args(argv)
    if args.messages < 1000 or args.repeat < 1:
        parser.error("--messages must be >= 1000 and --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    try:
        tools = make_tools([t for t in args.tools.split(",") if t], args.mailmirror)
    except ValueError as e:
        log(f"error: {e}")
        return 2
    missing = [f"{t.name}: {why}" for t in tools if (why := t.check_ready())]
    if why := check_gnu_time():
        missing.append(why)
    if missing:
        log("error: cannot run " + "; ".join(missing))
        return 2
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("failed-*"):  # kept by an earlier run (see Bench.keep)
        shutil.rmtree(stale)
    tree, total_bytes = ensure_tree(root, args.messages, args.seed)
    bench = Bench(tree, root / "work", args.seed, Local())
    for tool in tools:
        bench.add_tool(tool)
    for run in range(1, args.repeat + 1):
        for tool in tools:
            if tool.supports(bench.transport):
                bench.chain(tool, run)
    help_seconds = []
    if any(t.name == MM for t in tools):
        for _ in range(HELP_RUNS):
            m = measure([args.mailmirror, "--help"], dict(os.environ), 60)
            if m.returncode == 0:
                help_seconds.append(m.seconds)
    shutil.rmtree(root / "work", ignore_errors=True)
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
        cases=bench.cases,
        results=bench.results,
        help_seconds=help_seconds,
        load=(load_start, os.getloadavg()[0]),
        seconds_total=time.perf_counter() - started,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    if not report.correct():
        return 1
    return 3 if report.targets_failed() else 0


if __name__ == "__main__":
    sys.exit(main())
