"""Every file under docs/examples/ is checked by the real tool for its kind, and every file
shown in docs/*.md is one of them, so the guide's examples cannot rot.

The convention (docs/README.md): a fenced block that shows a file is preceded by
`<!-- example: docs/examples/PATH -->` (the block is the whole file) or
`<!-- excerpt: docs/examples/PATH -->` (the block is a run of consecutive lines of it).
Blocks tagged sh, console, json or text show commands and output and need no marker; any
other block, including one with no language, must carry one.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.docs.examples import CHECKERS, EXAMPLES, ROOT, kind_of

FILES = sorted(p for p in EXAMPLES.rglob("*") if p.is_file())
DOCS = sorted((ROOT / "docs").glob("*.md"))
FREE_LANGUAGES = {"sh", "console", "json", "text"}
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.S | re.M)
_MARKER = re.compile(r"<!-- (example|excerpt): (\S+) -->\s*$")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_example_file_passes_the_real_check_for_its_kind(path: Path) -> None:
    kind = kind_of(path)
    assert kind is not None, (f"{path.relative_to(ROOT)}: no checker knows this kind of file;"
                              " add one to tests/docs/examples.py")
    problems = CHECKERS[kind](path)
    assert not problems, f"{path.relative_to(ROOT)} ({kind}): " + "\n".join(problems)


def test_every_kind_has_an_example() -> None:
    shown = {kind_of(p) for p in FILES}
    assert shown >= set(CHECKERS), f"no example of {set(CHECKERS) - shown}: a dead checker"


def fenced_blocks(doc: Path) -> list[tuple[int, str, str, tuple[str, str] | None]]:
    """(line, language, body, (marker kind, path) or None) for each fenced block of a doc."""
    text = doc.read_text()
    blocks = []
    for found in _FENCE.finditer(text):
        line = text.count("\n", 0, found.start()) + 1
        before = text[:found.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        blocks.append((line, found.group(1), found.group(2),
                       (marker.group(1), marker.group(2)) if marker else None))
    return blocks


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_files_shown_in_the_docs_are_the_examples(doc: Path) -> None:
    problems = []
    for line, language, body, marker in fenced_blocks(doc):
        where = f"docs/{doc.name}:{line}"
        if marker is None:
            if language not in FREE_LANGUAGES:
                problems.append(f"{where}: a ```{language} block needs <!-- example: PATH -->")
            continue
        kind, name = marker
        source = ROOT / name
        if not source.is_file() or EXAMPLES not in source.parents:
            problems.append(f"{where}: {name} is not a file under docs/examples/")
            continue
        shown, real = body.splitlines(), source.read_text().splitlines()
        if kind == "example" and shown != real:
            problems.append(f"{where}: differs from {name}")
        if kind == "excerpt" and not _is_run(shown, real):
            problems.append(f"{where}: not consecutive lines of {name}")
    assert not problems, "\n".join(problems)


def _is_run(part: list[str], whole: list[str]) -> bool:
    return bool(part) and any(whole[i:i + len(part)] == part
                              for i in range(len(whole) - len(part) + 1))


def test_the_marker_check_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("<!-- example: docs/examples/desktop/crontab -->\n```crontab\nx\n```\n"
                   "```toml\na = 1\n```\n")
    blocks = fenced_blocks(doc)
    assert [(b[0], b[1], b[3]) for b in blocks] == [
        (2, "crontab", ("example", "docs/examples/desktop/crontab")), (5, "toml", None)]


WRAPPER = EXAMPLES / "ssh" / "mailmirror-agent-wrapper"


@pytest.mark.parametrize("command, allowed", [
    ("sudo -n -u alice /usr/local/bin/mailmirror agent /home/alice/Maildir", True),
    ("sudo -n -u alice /usr/local/bin/mailmirror agent /a; rm -rf /", False),
    ("sudo -n -u alice /bin/sh -c id x", False),
    ("mailmirror agent /home/alice/Maildir", False),
    ("sudo -n -u alice /usr/local/bin/mailmirror agent *", True),
])
def test_the_forced_command_wrapper_lets_only_the_agent_through(command: str,
                                                                 allowed: bool) -> None:
    """The wrapper of docs/remote.md: anything but `sudo -n -u USER mailmirror agent PATH` is
    refused before sudo runs; an allowed command reaches sudo (which then fails here: there
    is no mailmirror under /usr/local/bin on a test machine, or no such user)."""
    env = {"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": command}
    run = subprocess.run([str(WRAPPER)], env=env, capture_output=True, text=True,
                         cwd=ROOT / "docs")
    assert run.returncode != 0 or os.path.exists("/usr/local/bin/mailmirror")
    assert ("refused:" in run.stderr) is not allowed, run.stderr
