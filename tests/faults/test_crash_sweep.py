"""The crash-point sweep: a scripted sync killed after its N-th file operation, for N = 1, 2, ...
until a run completes, on the client and on the remote agent. After every crash one clean run
must reach exactly the crash-free final state: the same files in cur/ and new/ (names and
contents), the same folders, no duplicate, nothing left in any tmp/, and a state database that
passes `PRAGMA integrity_check`.

The switch is mailmirror/crashpoint.py (`MAILMIRROR_CRASH_AFTER=N`, tests only). CI runs every
STRIDE-th crash point; `MAILMIRROR_TEST_SWEEP=full` runs every one (see docs/spec.md, Faults).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import MAILMIRROR
from tests.e2e.sshkit import AGENT_COMMAND, deliver, maildir, messages, ssh_args
from tests.ssh.sshrig import ALIAS, SshRig

FULL = os.environ.get("MAILMIRROR_TEST_SWEEP") == "full"
STRIDE = {"client": 1 if FULL else 3, "agent": 1 if FULL else 4}
CRASHED = -9  # SIGKILL, as the switch dies
QUARANTINE = "mailmirror-quarantine"


def _env(tmp: Path, crash: int | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp),
           "XDG_CONFIG_HOME": str(tmp / "config"), "LANG": "C.UTF-8"}
    if crash is not None:
        env["MAILMIRROR_CRASH_AFTER"] = str(crash)
    return env


def _sync(work: Path, b: str, extra: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([MAILMIRROR, "sync", str(work / "a"), b, "--state",
                           str(work / "state.db"), "--json", *extra],
                          env=env, capture_output=True, text=True, timeout=60)


def _rename(root: Path, folder: str, subdir: str, key: str, new_folder: str, new_subdir: str,
            flags: str | None) -> None:
    def where(f: str) -> Path:
        return root if f == "INBOX" else root / ("." + f.replace("/", "."))

    (old,) = [p for p in (where(folder) / subdir).iterdir() if p.name.startswith(key)]
    os.rename(old, where(new_folder) / new_subdir / (key if flags is None else f"{key}:2,{flags}"))


def build_scenario(top: Path) -> Path:
    """A synced pair, then changes on both sides: new mail, flag changes (one concurrent), a
    delete on each side, a message moved, a new folder on A and a folder renamed on B."""
    work = top / "template"
    a, b = work / "a", work / "b"
    maildir(a, "Work", "Old")
    for i in range(1, 7):
        deliver(a, f"1700000000.M{i}P1.box", "INBOX", "cur", "S", size=200 * i)
    for i in range(1, 5):
        deliver(a, f"1700000001.M{i}P1.work", "Work", "cur", "S")
    for i in range(1, 4):
        deliver(a, f"1700000002.M{i}P1.old", "Old", "new")
    first = _sync(work, str(b), [], _env(top))
    assert first.returncode == 0, first.stderr
    # A: new mail, a flag change, a delete, a move to another folder, a new folder
    deliver(a, "1800000000.M1P1.anew", "INBOX", "new")
    deliver(a, "1800000000.M2P1.anew", "Work", "cur", "S", size=5000)
    _rename(a, "INBOX", "cur", "1700000000.M1P1.box", "INBOX", "cur", "FS")
    os.unlink(next((a / "cur").glob("1700000000.M2P1.box*")))
    _rename(a, "INBOX", "cur", "1700000000.M3P1.box", "Work", "cur", "S")
    _rename(a, "INBOX", "cur", "1700000000.M4P1.box", "INBOX", "cur", "RS")
    maildir(a, "Fresh")
    deliver(a, "1800000000.M3P1.anew", "Fresh", "cur", "S")
    deliver(a, "1800000000.M4P1.anew", "Fresh", "new")
    # B: new mail, flag changes (one on the message A changed too), a delete, new -> cur,
    # and the folder Old renamed to Renamed
    deliver(b, "1800000001.M1P1.bnew", "INBOX", "new", size=3000)
    _rename(b, "INBOX", "cur", "1700000000.M4P1.box", "INBOX", "cur", "FS")
    _rename(b, "INBOX", "cur", "1700000000.M5P1.box", "INBOX", "cur", "")
    os.unlink(next((b / ".Work" / "cur").glob("1700000001.M1P1.work*")))
    _rename(b, "Old", "new", "1700000002.M1P1.old", "Old", "cur", "S")
    os.rename(b / ".Old", b / ".Renamed")
    return work


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file in a cur/ or new/ (relative path -> content), and every folder ('x/')."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and QUARANTINE in dirnames:
            dirnames.remove(QUARANTINE)  # deleted mail kept aside: not a folder
        rel = os.path.relpath(dirpath, root)
        if os.path.basename(dirpath) in ("cur", "new"):
            for name in filenames:
                out[f"{rel}/{name}"] = Path(dirpath, name).read_bytes()
        elif "cur" in dirnames:
            out[f"{rel}/"] = b""
    return out


def leftovers(root: Path) -> list[str]:
    """Whatever is in any tmp/ of the tree."""
    return [f"{os.path.relpath(d, root)}/{n}" for d, _, _ in os.walk(root)
            if os.path.basename(d) == "tmp" for n in os.listdir(d)]


def check_converged(work: Path, expected: dict[str, dict[str, bytes]], what: str) -> None:
    for side in ("a", "b"):
        root = work / side
        dups = {k: v for k, v in messages(root).items() if len(v) != 1}
        assert not dups, f"{what}: duplicates on {side}: {sorted(dups)}"
        got = snapshot(root)
        assert got == expected[side], (
            f"{what}: {side} differs from the crash-free result: "
            f"missing {sorted(set(expected[side]) - set(got))}, "
            f"extra {sorted(set(got) - set(expected[side]))}")
        assert leftovers(root) == [], f"{what}: left in tmp/ on {side}: {leftovers(root)}"
    with sqlite3.connect(work / "state.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", what


def sweep(tmp_path: Path, stride: int, b_of: Callable[[Path], str],
          args_of: Callable[[int | None], list[str]], env_of: Callable[[int], dict]) -> int:
    """Run the scenario crashed at N = 1, 1+stride, ... until a run completes; return how
    many crash points were checked."""
    template = build_scenario(tmp_path)
    ref = tmp_path / "reference"
    shutil.copytree(template, ref, symlinks=True)
    done = _sync(ref, b_of(ref), args_of(None), _env(tmp_path))
    assert done.returncode == 0, done.stderr
    expected = {side: snapshot(ref / side) for side in ("a", "b")}
    assert expected["a"] == expected["b"] and leftovers(ref / "a") == leftovers(ref / "b") == []
    checked, n = 0, 1
    while True:
        work = tmp_path / f"n{n}"
        shutil.copytree(template, work, symlinks=True)
        crashed = _sync(work, b_of(work), args_of(n), env_of(n))
        what = f"crash after operation {n} ({crashed.stderr.strip()[-160:]!r})"
        if crashed.returncode in (0, 1) and "killed after" not in crashed.stderr:
            assert crashed.returncode == 0, crashed.stderr
            check_converged(work, expected, f"uncrashed run N={n}")
            print(f"crash points checked: {checked} (stride {stride}), run completes at N={n}")
            return checked
        assert crashed.returncode in (CRASHED, 3), (crashed.returncode, crashed.stderr)
        again = _sync(work, b_of(work), args_of(None), _env(tmp_path))
        assert again.returncode == 0, f"{what}: clean run failed: {again.stderr}"
        check_converged(work, expected, what)
        shutil.rmtree(work)
        checked += 1
        n += stride


def test_client_killed_at_every_file_operation(tmp_path: Path) -> None:
    checked = sweep(tmp_path, STRIDE["client"], lambda w: str(w / "b"), lambda n: [],
                    lambda n: _env(tmp_path, n))
    assert checked >= 15, f"only {checked} crash points: the scenario is too small"


def test_agent_killed_at_every_file_operation(tmp_path: Path, ssh_rig: SshRig) -> None:
    def args(n: int | None) -> list[str]:
        prefix = "" if n is None else f"env MAILMIRROR_CRASH_AFTER={n} "
        return ssh_args(ssh_rig, command=prefix + AGENT_COMMAND)

    checked = sweep(tmp_path, STRIDE["agent"], lambda w: f"ssh://{ALIAS}{w / 'b'}", args,
                    lambda n: _env(tmp_path))
    assert checked >= 8, f"only {checked} crash points: the scenario is too small"
