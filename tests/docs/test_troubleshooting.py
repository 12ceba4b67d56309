"""Every user-facing error message of mailmirror and failover is in docs/troubleshooting.md.

The messages are found in the source, not listed by hand, so a message added later is checked
too: every call of an error class (MailmirrorError and its subclasses, ReplicaError,
SafetyStop, TemplateError, ... wherever they are defined) in mailmirror/ and failover/ whose
message is a string, an f-string, a sum of them or a string method's result; for a class whose
__init__ writes its own message (`super().__init__(f"...")`), that message instead. The doc must
quote each message's stable fragment: the first four words of its first piece of fixed text
with at least three words (the part saying what went wrong; the doc may shorten what follows
to `...`), or its piece with the most words when no piece has three. Words are compared
without case and punctuation, so the doc's `PATH is not a directory: give ...` covers
f"{path} is not a directory: give ...". A message with no fixed words at all (only a system
error's text) has nothing to quote.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "troubleshooting.md"
PACKAGES = ("mailmirror", "failover")
BASE = "MailmirrorError"
WORDS = 4

RELAYED = {
    ("mailmirror/replica/remote.py", "message"): "the agent's own error, raised on its side",
}
"""Messages that are a variable: (file, expression) -> where the text itself is checked."""


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@dataclass(frozen=True)
class Message:
    where: str  # file:line
    source: str  # the message expression, as written
    fragment: str  # what the doc must quote ("" when there is nothing fixed to quote)


def pieces(node: ast.expr) -> list[str] | None:
    """The fixed pieces of text of a message expression, or None if it is not text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = pieces(node.left), pieces(node.right)
        return None if left is None else left + (right or [])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):  # "...".strip()
        return pieces(node.func.value)
    return None


def fragment(fixed: list[str]) -> str:
    """The first WORDS words of the first piece with three or more, else the piece with the
    most words (the first of those); "" when no piece has a word."""
    split = [words(piece) for piece in fixed]
    for found in split:
        if len(found) >= 3:
            return " ".join(found[:WORDS])
    return " ".join(max(split, key=len, default=[]))


def error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """Names of MailmirrorError and every class derived from it, in any module."""
    names, grew = {BASE}, True
    while grew:
        grew = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names:
                    if {_name(base) for base in node.bases} & names:
                        names.add(node.name)
                        grew = True
    return names


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def own_messages(trees: dict[Path, ast.Module], classes: set[str]) -> dict[str, list[ast.Call]]:
    """Error classes whose __init__ writes the message itself (`super().__init__(f"...")`), with
    those calls; the arguments given to such a class are not its message."""
    found: dict[str, list[ast.Call]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in classes:
                for call in ast.walk(node):
                    if (
                        isinstance(call, ast.Call)
                        and _name(call.func) == "__init__"
                        and call.args
                        and pieces(call.args[0]) is not None
                    ):
                        found.setdefault(node.name, []).append(call)
    return found


def messages() -> list[Message]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    classes = error_classes(trees)
    own = own_messages(trees, classes)
    builders = {call for calls in own.values() for call in calls}
    found = []
    for path, tree in trees.items():
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            if node in builders or (_name(node.func) in classes and _name(node.func) not in own):
                arg = node.args[0]
                source = ast.unparse(arg)
                fixed = pieces(arg)
                if fixed is None:
                    assert (rel, source) in RELAYED, (
                        f"{rel}:{node.lineno}: the message {source} is not a string: write it "
                        "out, or add it to RELAYED with where its text is checked"
                    )
                    continue
                found.append(Message(f"{rel}:{node.lineno}", source, fragment(fixed)))
    return found


MESSAGES = messages()


def test_the_scan_finds_the_messages() -> None:
    sources = " ".join(m.source for m in MESSAGES)
    assert len(MESSAGES) > 100
    for known in ("looks empty but held", "host key not verified", "unknown marker"):
        assert known in sources


@pytest.mark.parametrize("message", [m for m in MESSAGES if m.fragment], ids=lambda m: m.where)
def test_message_is_in_the_troubleshooting_doc(message: Message) -> None:
    doc = " " + " ".join(words(DOC.read_text())) + " "
    assert f" {message.fragment} " in doc, (
        f"{message.where}: docs/troubleshooting.md does not quote {message.fragment!r} of "
        f"the message {message.source}: add it, with its fix, to the table of its kind"
    )
