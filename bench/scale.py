"""The scale run of issue 6 (not in CI): a first copy and a no-change sync of 1,000,000 messages
over the loopback sshd, with the peak memory of the client and of the agent.

    .venv/bin/python -m bench.scale                      # 1,000,000 messages: ~15 min
    .venv/bin/python -m bench.scale --messages 100000    # a smoke run: ~2 min

What is measured is how mailmirror scales with the *number* of messages, so the messages are
small (about 1.5 KB: 1,000,000 take ~1.6 GB per copy on tmpfs), spread over the 20 folders
of bench/gen.py with its names and flag profiles. Steps: generate A; `mailmirror sync A
127.0.0.1:B` (first copy, timed, peaks of client and agent); age the folder times and run one
settling sync (as an earlier cron run would have); the timed no-change sync, which lists no
folder, and the same with --full, which lists and compares every name (what a folder whose
directory times moved costs, at the scale of the whole maildir). The trees are
checked afterwards: the same names in every folder on both sides. Exit status: 0 fine; 1 a
run failed or the trees differ; 2 a tool missing; 3 a target missed at 1,000,000 messages
(peaks under 1 GB each).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from bench.gen import FOLDERS, HOST, PROFILES, apportion, make_folder, message_name
from bench.maildir import folder_dir, format_name
from bench.measure import check_gnu_time, measure
from bench.ssh import Ssh, check_ssh, loopback

REPO = Path(__file__).resolve().parent.parent
FULL_SIZE = 1_000_000
LIMIT_MB = 1000.0
TIMEOUT = 4 * 3600.0
CASES = ("first copy", "no change", "full rescan")


def log(line: str) -> None:
    print(f"[scale] {line}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=FULL_SIZE)
    p.add_argument("--root", type=Path, default=Path("/dev/shm/mailmirror-scale"))
    p.add_argument("--mailmirror", default=str(REPO / ".venv" / "bin" / "mailmirror"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def generate_small(root: Path, messages: int, seed: int) -> None:
    """Many small messages with realistic names and flags (see the module docstring)."""
    rng = random.Random(f"{seed}:scale")
    serial = 0
    filler = b"".join(b"%05d the quick brown fox jumps over the lazy dog\n" % i
                      for i in range(24))
    for (folder, _, profile), count in zip(FOLDERS, apportion(messages), strict=True):
        path = make_folder(root, folder)
        weights, new_share = PROFILES[profile]
        flag_sets = [f for f, _ in weights]
        first_new = count - round(count * new_share)
        for i in range(count):
            serial += 1
            secs = 1_500_000_000 + serial * 30
            data = (f"From: someone{serial % 997}@example.org\nTo: alice@example.net\n"
                    f"Subject: message {serial}\nMessage-ID: <{serial}.{seed}@example.org>\n\n"
                    ).encode() + filler
            unique = message_name(secs, serial, rng, HOST, data)
            if i >= first_new:
                target = path / "new" / unique
            else:
                flags = rng.choices(flag_sets, [w for _, w in weights])[0]
                target = path / "cur" / format_name(unique, flags)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def age_folders(*trees: Path, seconds: float = 60) -> None:
    past = time.time() - seconds
    for tree in trees:
        for folder, _, _ in FOLDERS:
            for sub in ("cur", "new"):
                path = folder_dir(tree, folder) / sub
                if path.exists():
                    os.utime(path, (past, past))


def listing(root: Path) -> dict[str, list[str]]:
    return {f"{folder}/{sub}": sorted(os.listdir(folder_dir(root, folder) / sub))
            for folder, _, _ in FOLDERS for sub in ("cur", "new")
            if (folder_dir(root, folder) / sub).is_dir()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for why in (check_ssh(), check_gnu_time()):
        if why:
            log(f"error: {why}")
            return 2
    root: Path = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    a, b = root / "A", root / "B"
    started = time.monotonic()
    log(f"generating {args.messages} small messages")
    generate_small(a, args.messages, args.seed)
    log(f"generated in {time.monotonic() - started:.0f} s")
    try:
        with loopback(root / "sshd") as ssh:
            result = run(args, ssh, a, b, root / "state")
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report(args, result)


def run(args: argparse.Namespace, ssh: Ssh, a: Path, b: Path,
        state: Path) -> dict[str, float]:
    e = ssh.ssh
    env = dict(os.environ, MAILMIRROR_STATE=str(state / "state.db"))
    argv = [args.mailmirror, "sync", str(a), ssh.address(b), "--json",
            *e.mailmirror_args, "--remote-command", f"{e.remote_time} {args.mailmirror} agent"]
    out: dict[str, float] = {"messages": args.messages}
    for case in ("first copy", "settle", "no change", "full rescan"):
        if case == "settle":
            age_folders(a, b)
        log(f"{case} over SSH")
        ssh.before_run()
        m = measure(argv + (["--full"] if case == "full rescan" else []), env, TIMEOUT)
        if m.failure():
            raise RuntimeError(f"{case}: {m.failure()}")
        counts = json.loads(m.stdout)["counts"]
        if case in ("no change", "full rescan") and counts:
            raise RuntimeError(f"the no-change sync did something: {counts}")
        if case != "settle":
            key = case.replace(" ", "_")
            out[f"{key}_s"] = m.seconds
            out[f"{key}_client_mb"] = m.peak_mb
            out[f"{key}_agent_mb"] = ssh.remote_peak_mb() or 0.0
            log(f"{case}: {m.seconds:.1f} s, client {m.peak_mb:.0f} MB, agent "
                f"{out[f'{key}_agent_mb']:.0f} MB")
    if listing(a) != listing(b):
        raise RuntimeError("A and B differ after the sync")
    return out


def report(args: argparse.Namespace, r: dict[str, float]) -> int:
    peaks = {f"{case} {side}": r[f"{case.replace(' ', '_')}_{side}_mb"]
             for case in CASES for side in ("client", "agent")}
    judged = args.messages >= FULL_SIZE
    if args.json:
        print(json.dumps(r | {"judged": judged}))
    else:
        print(f"mailmirror over SSH on loopback, {r['messages']:.0f} messages (~1.5 KB each)")
        print("| case | seconds | client peak MB | agent peak MB |")
        print("|---|---:|---:|---:|")
        for case in CASES:
            key = case.replace(" ", "_")
            print(f"| {case} | {r[f'{key}_s']:.2f} | {r[f'{key}_client_mb']:.0f} | "
                  f"{r[f'{key}_agent_mb']:.0f} |")
        print("\nTarget" + ("" if judged else " (information only below 1,000,000)") + ":")
        worst = max(peaks.values())
        print(f"  {'PASS' if worst < LIMIT_MB else 'FAIL'}  peak RSS of client and agent "
              f"< 1 GB each: highest {worst:.0f} MB")
    return 3 if judged and max(peaks.values()) >= LIMIT_MB else 0


if __name__ == "__main__":
    sys.exit(main())
