"""The vocabulary of a sync: plain immutable values shared by planner, executor and reports.

Glossary (one word, one meaning):
- replica: one Maildir tree; a sync runs between two replicas, sides A and B.
- folder: a mailbox, named canonically ("INBOX", "Lists/Debian"), whatever the on-disk layout.
- subdir: "new" or "cur".
- name: a message file name as on disk on one replica; key: the message identity.
- flags: canonical flags: system letters "D F P R S T" and keyword *names* ("$Label1"),
  translated from per-folder keyword letters by the replica that read them.
- entry: where a message is and what it carries (folder, subdir, flags, size).
- base: the entry both replicas held after the last successful sync of this pair.
- listing: the entries a replica holds now; plan: the decisions for one run; action: one step.
- conflict: both sides changed a message incompatibly; resolved by a stated rule and reported.
This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

NEW = "new"
CUR = "cur"

Flags = frozenset[str]


class Side(Enum):
    A = "a"
    B = "b"

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is slow in hot loops

    @property
    def other(self) -> Side:
        return Side.B if self is Side.A else Side.A


@dataclass(frozen=True, slots=True)
class Entry:
    """A message's place and state on one replica (or in the base). size None = unknown."""

    folder: str
    subdir: str
    flags: Flags = frozenset()
    size: int | None = None

    def moved(self, folder: str | None = None, subdir: str | None = None,
              flags: Flags | None = None) -> Entry:
        return Entry(
            self.folder if folder is None else folder,
            self.subdir if subdir is None else subdir,
            self.flags if flags is None else flags,
            self.size,
        )

    def same_state(self, other: Entry) -> bool:
        """Equal for sync purposes: size is a property of content, not of state."""
        return (self.folder, self.subdir, self.flags) == (other.folder, other.subdir, other.flags)


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy the message `key` from `source` to the other side, landing as `entry`.

    The target must not hold `key` yet; the executor writes tmp/, flushes, then publishes
    without clobbering.
    """

    key: str
    source: Side
    entry: Entry

    @property
    def side(self) -> Side:
        return self.source.other


@dataclass(frozen=True, slots=True)
class Move:
    """Rename the message `key` on `side` so it becomes `entry` (flags, subdir and/or folder)."""

    key: str
    side: Side
    entry: Entry


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the message `key` from `side`, if its name there is still the one listed."""

    key: str
    side: Side


@dataclass(frozen=True, slots=True)
class Rekey:
    """Give `side`'s message `key` the fresh identity `new_key` (a content clash), same place."""

    key: str
    side: Side
    new_key: str


Action = Copy | Move | Delete | Rekey


@dataclass(frozen=True, slots=True)
class Conflict:
    """A reported conflict: which message, what happened, and how it was resolved."""

    key: str
    kind: str
    resolution: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything one message needs: actions in order, the base rows to record afterwards.

    `new_base` is the base row of `key` (None: forget it); `extra` holds rows of other keys
    the decision creates (a rekeyed message). Kept flat: a first sync makes one per message.
    """

    key: str
    actions: tuple[Action, ...]
    new_base: Entry | None
    conflict: Conflict | None = None
    extra: tuple[tuple[str, Entry], ...] = ()

    @property
    def base(self) -> dict[str, Entry | None]:
        """Every base row this decision records, by key."""
        return {self.key: self.new_base, **dict(self.extra)}


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...] = ()
    conflicts: tuple[Conflict, ...] = field(default=())

    @property
    def actions(self) -> list[Action]:
        return [a for d in self.decisions for a in d.actions]

    def is_empty(self) -> bool:
        return not any(d.actions for d in self.decisions)
