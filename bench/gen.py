"""Deterministic Maildir++ trees and the benchmark's delta change set.

`generate` writes a tree like a long-lived Dovecot mailbox: INBOX plus 19 `.Name` subfolders,
mostly 2-20 KB messages with a few hundred large ones, Dovecot-style file names with `,S=` and
`,W=`, flags typical of each folder, the newest unread mail in new/. `plan_delta` and
`apply_side` describe and perform the changes made between two syncs. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import itertools
import math
import os
import random
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from bench.maildir import (
    INBOX,
    Identify,
    Key,
    Listing,
    State,
    by_name,
    folder_dir,
    format_name,
    scan,
    split_name,
)

HOST = "mail.example.net"
FIRST_SECS = 1_420_000_000  # Jan 2015: the oldest message
LAST_SECS = 1_700_000_000  # Nov 2023: the newest message, and every directory's mtime

# Flag profiles: (flags, weight) for messages in cur/, and the share of each folder in new/.
PROFILES: dict[str, tuple[tuple[tuple[str, float], ...], float]] = {
    "inbox": (
        (("S", 60), ("RS", 12), ("", 10), ("FS", 5), ("FRS", 2), ("PS", 1.5), ("ST", 1)),
        0.05,
    ),
    "read": ((("S", 80), ("RS", 12), ("FS", 3), ("", 2), ("PS", 1.5), ("FRS", 1)), 0.0),
    "lists": ((("S", 70), ("", 25), ("FS", 2), ("RS", 2)), 0.05),
    "sent": ((("S", 95), ("FS", 3), ("RS", 2)), 0.0),
    "drafts": ((("DS", 60), ("D", 40)), 0.0),
    "trash": ((("S", 75), ("ST", 15), ("RS", 7), ("", 3)), 0.0),
    "junk": ((("", 80), ("S", 20)), 0.10),
}

# The 20 folders: (name, share of all messages, profile).
FOLDERS: tuple[tuple[str, float, str], ...] = (
    (INBOX, 0.14, "inbox"),
    ("Sent", 0.08, "sent"),
    ("Drafts", 0.002, "drafts"),
    ("Trash", 0.03, "trash"),
    ("Junk", 0.02, "junk"),
    ("Archive", 0.05, "read"),
    ("Archive.2019", 0.07, "read"),
    ("Archive.2020", 0.07, "read"),
    ("Archive.2021", 0.07, "read"),
    ("Archive.2022", 0.07, "read"),
    ("Archive.2023", 0.07, "read"),
    ("Lists", 0.01, "lists"),
    ("Lists.debian-devel", 0.07, "lists"),
    ("Lists.python-dev", 0.06, "lists"),
    ("Lists.dovecot", 0.03, "lists"),
    ("Work", 0.04, "read"),
    ("Work.Projects", 0.03, "read"),
    ("Work.Clients", 0.02, "read"),
    ("Family", 0.02, "read"),
    ("Receipts", 0.01, "read"),
)

WORDS = (
    "the of and to in is that for it as with was on be by this are from at or have an not "
    "but which all were they their has been one more can will would there what about if out "
    "mail server sync message folder backup patch release build test please thanks regards "
    "meeting tomorrow invoice attached question update issue config debian python dovecot "
    "postfix ssh key disk network kernel package version upstream review change commit"
).split()


def sample_size(rng: random.Random) -> int:
    """A message size in bytes: mostly 2-20 KB, 2.5% 20-150 KB, 0.2% 150 KB-5 MB.

    The mean is about 11 KB, so 100,000 messages make about 1 GiB.
    """
    u = rng.random()
    if u < 0.973:
        return min(20_000, max(2_000, int(rng.lognormvariate(math.log(6_000), 0.5))))
    low, high = (20_000, 150_000) if u < 0.998 else (150_000, 5_000_000)
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


class _Pools:
    """Filler text and base64 attachment data, built once from the seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"{seed}:pools")
        lines, length = [], 0
        while length < 256 * 1024:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 13)))
            lines.append(line[0].upper() + line[1:] + ".\n")
            length += len(lines[-1])
        text = "".join(lines).encode()
        b64 = base64.encodebytes(rng.randbytes(768 * 1024))
        # Doubled so that any slice up to one pool length is a plain slice.
        self.text, self.b64 = text * 2, b64 * 2

    @staticmethod
    def fill(pool: bytes, n: int, rng: random.Random) -> bytes:
        """n bytes of the pool from a random offset, ending in a newline."""
        half = len(pool) // 2
        if n > half:
            pool = pool * (n // half + 2)
        start = rng.randrange(half)
        return pool[start : start + n - 1] + b"\n"


def build_message(secs: int, size: int, rng: random.Random, pools: _Pools) -> bytes:
    """An RFC 5322 message of exactly `size` bytes (LF line ends), multipart when large."""
    date = formatdate(secs)
    domain = rng.choice(("example.org", "example.com", "lists.example.org", "example.net"))
    sender = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}@{domain}"
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
    head = (
        f"Return-Path: <{sender}>\n"
        f"Delivered-To: user@example.net\n"
        f"Received: from mx.{domain} (mx.{domain} [192.0.2.{rng.randrange(1, 255)}])\n"
        f"\tby {HOST} (Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n"
        f"\tfor <user@example.net>; {date}\n"
        f"Message-ID: <{secs}.{rng.getrandbits(48):012x}@{domain}>\n"
        f"Date: {date}\n"
        f"From: {sender.split('@')[0].title()} <{sender}>\n"
        f"To: user@example.net\n"
        f"Subject: {subject.capitalize()}\n"
        f"MIME-Version: 1.0\n"
    )
    if size < 100_000:
        head += "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        data = head.encode()
        return data + pools.fill(pools.text, size - len(data), rng)
    boundary = f"=-{rng.getrandbits(64):016x}"
    head += (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
        f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n"
    )
    text = pools.fill(pools.text, rng.randint(500, 3_000), rng)
    part = (
        f'--{boundary}\nContent-Type: application/pdf; name="scan{secs}.pdf"\n'
        f"Content-Transfer-Encoding: base64\n\n"
    ).encode()
    tail = f"--{boundary}--\n".encode()
    data = head.encode() + text + part
    return data + pools.fill(pools.b64, size - len(data) - len(tail), rng) + tail


def message_name(secs: int, serial: int, rng: random.Random, host: str, data: bytes) -> str:
    """Dovecot-style unique name `<secs>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>`."""
    usec, pid = rng.randrange(1_000_000), rng.randrange(1_000, 4_000_000)
    vsize = len(data) + data.count(b"\n")  # the size with CRLF line ends, as IMAP sees it
    return f"{secs}.M{usec}P{pid}Q{serial}.{host},S={len(data)},W={vsize}"


def make_folder(root: Path, folder: str) -> Path:
    """Create a folder's cur/ new/ tmp/ (and `maildirfolder` for subfolders) as an MDA would."""
    path = folder_dir(root, folder)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if folder != INBOX:
        (path / "maildirfolder").touch()
    return path


def apportion(n: int) -> list[int]:
    """Split n messages over FOLDERS by share (largest remainders), deterministically."""
    total = sum(share for _, share, _ in FOLDERS)
    exact = [n * share / total for _, share, _ in FOLDERS]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class TreeSummary:
    messages: int
    bytes: int


def generate(root: Path, messages: int, seed: int) -> TreeSummary:
    """Write a fresh tree at `root` (which must not exist). Directory mtimes are set in the past."""
    rng = random.Random(f"{seed}:tree")
    pools = _Pools(seed)
    serial = itertools.count(1)
    total = 0
    for (folder, _, profile), count in zip(FOLDERS, apportion(messages), strict=True):
        path = make_folder(root, folder)
        weights, new_share = PROFILES[profile]
        flag_sets = [f for f, _ in weights]
        cumulative = list(itertools.accumulate(w for _, w in weights))
        times = sorted(rng.randrange(FIRST_SECS, LAST_SECS) for _ in range(count))
        first_new = count - round(count * new_share)
        for i, secs in enumerate(times):
            data = build_message(secs, sample_size(rng), rng, pools)
            unique = message_name(secs, next(serial), rng, HOST, data)
            if i >= first_new:
                target = path / "new" / unique
            else:
                flags = flag_sets[bisect.bisect(cumulative, rng.random() * cumulative[-1])]
                target = path / "cur" / format_name(unique, flags)
            target.write_bytes(data)
            os.utime(target, (secs, secs))
            total += len(data)
    for folder, _, _ in FOLDERS:
        path = folder_dir(root, folder)
        for sub in ("cur", "new", "tmp", "maildirfolder", "."):
            if (path / sub).exists():
                os.utime(path / sub, (LAST_SECS, LAST_SECS))
    return TreeSummary(messages, total)


# --- the delta: what users and MDAs change between two syncs ------------------------------


@dataclass(frozen=True)
class FlagChange:
    """Set a message's flags (it ends in cur/, as a mail client leaves it)."""

    key: Key
    flags: str


@dataclass(frozen=True)
class NewMessage:
    """A message delivered (new/) or saved by a client (cur/, e.g. a sent message)."""

    folder: str
    subdir: str
    name: str
    data: bytes


@dataclass(frozen=True)
class SideDelta:
    flag_changes: tuple[FlagChange, ...]
    new: tuple[NewMessage, ...]
    deletions: tuple[Key, ...]


@dataclass(frozen=True)
class Delta:
    """Changes made on both replicas between two syncs; the keys touched on A and B are disjoint,
    so the expected result involves no conflict."""

    a: SideDelta
    b: SideDelta

    def expected(self, before: State) -> State:
        """The state both trees must hold after syncing, given the state before the changes."""
        state = dict(before)
        for side in (self.a, self.b):
            for change in side.flag_changes:
                state[change.key] = ("cur", change.flags)
            for key in side.deletions:
                del state[key]
            for msg in side.new:
                unique, flags = split_name(msg.name)
                state[(msg.folder, unique)] = (msg.subdir, flags)
        return state


# Flag edits a mail client makes: (add, remove).
EDITS = (("S", ""), ("RS", ""), ("F", ""), ("", "F"), ("T", ""), ("PS", ""), ("", "S"))


def _edit(flags: str, rng: random.Random) -> str:
    while True:
        add, remove = rng.choice(EDITS)
        result = "".join(sorted((set(flags) | set(add)) - set(remove)))
        if result != flags:
            return result


def _new_messages(side: str, count: int, seed: int, serial: int) -> tuple[NewMessage, ...]:
    rng = random.Random(f"{seed}:new:{side}")
    pools = _Pools(seed)
    lists = [f for f, _, profile in FOLDERS if profile == "lists"]
    out = []
    for i in range(count):
        secs = LAST_SECS + 60 * (i + 1)
        data = build_message(secs, sample_size(rng), rng, pools)
        unique = message_name(secs, serial + i, rng, f"mx-{side}.example.net", data)
        u = rng.random()
        if u < 0.15:  # a message sent from this replica's side, saved read
            out.append(NewMessage("Sent", "cur", format_name(unique, "S"), data))
        else:
            folder = INBOX if u < 0.65 else "Junk" if u < 0.70 else rng.choice(lists)
            out.append(NewMessage(folder, "new", unique, data))
    return tuple(out)


def plan_delta(tree: Listing, seed: int) -> Delta:
    """The delta for a generated tree: on A 100 flag changes (10 of them reading mail in new/)
    + 100 new + 50 deletions, on B 100 other flag changes + 100 new."""
    rng = random.Random(f"{seed}:delta")
    entries = tree.entries
    cur = sorted(k for k, e in entries.items() if e.subdir == "cur")
    new = sorted(k for k, e in entries.items() if e.subdir == "new")
    if len(cur) < 500 or len(new) < 10:
        raise ValueError("the delta needs a tree of at least 1,000 messages")
    picked = rng.sample(cur, 90 + 100 + 50)
    a_flags = [FlagChange(k, _edit(entries[k].flags, rng)) for k in picked[:90]]
    a_flags += [FlagChange(k, "S") for k in rng.sample(new, 10)]
    b_flags = [FlagChange(k, _edit(entries[k].flags, rng)) for k in picked[90:190]]
    serial = len(entries) + 1
    return Delta(
        a=SideDelta(tuple(a_flags), _new_messages("a", 100, seed, serial), tuple(picked[190:])),
        b=SideDelta(tuple(b_flags), _new_messages("b", 100, seed, serial + 100), ()),
    )


def apply_side(root: Path, side: SideDelta, identify: Identify = by_name) -> list[Key]:
    """Make one side's changes in the tree at `root`, locating messages by key (a tool may have
    renamed them, or written copies under names of its own: see `identify`). A flag change
    renames the file as a mail client does, keeping its name up to the info; new messages are
    written to tmp/ and renamed, as an MDA does.

    Returns the keys that could not be found (a sync that lost them is broken).
    """
    entries = scan(root, identify).entries
    lost = []
    for change in side.flag_changes:
        entry = entries.get(change.key)
        if entry is None:
            lost.append(change.key)
            continue
        unique = split_name(entry.name)[0]
        target = folder_dir(root, entry.folder) / "cur" / format_name(unique, change.flags)
        os.rename(entry.path(root), target)
    for key in side.deletions:
        entry = entries.get(key)
        if entry is None:
            lost.append(key)
            continue
        entry.path(root).unlink()
    for msg in side.new:
        path = folder_dir(root, msg.folder)
        if not (path / "cur").is_dir():  # a folder the tool failed to create: deliver anyway
            make_folder(root, msg.folder)
        tmp = path / "tmp" / msg.name
        tmp.write_bytes(msg.data)
        os.rename(tmp, path / msg.subdir / msg.name)
    return lost


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a deterministic Maildir++ tree.")
    parser.add_argument("root", type=Path, help="directory to create (must not exist)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.root.exists():
        parser.error(f"{args.root} exists")
    summary = generate(args.root, args.messages, args.seed)
    print(f"{summary.messages} messages, {summary.bytes / 2**20:.1f} MiB in {args.root}")


if __name__ == "__main__":
    main()
