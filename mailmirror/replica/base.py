"""The replica interface: everything the engine may ask of one Maildir tree.

Every replica kind (local directory, remote agent over SSH, SFTP) implements this contract and
is checked by the same contract tests. Operations come in batches so a remote replica can
pipeline them; each item gets its own Result, so one bad message never stops a batch.

Contract shared by all operations:
- A message is addressed by (folder, relname) with relname "cur/NAME" or "new/NAME".
- Nothing is ever clobbered: publishing or renaming onto an existing name gives EXISTS.
- A source name that vanished (a mail client renamed or expunged it meanwhile) gives GONE; the
  engine skips it and the next run picks the change up.
- A published message is durable: its data reached the disk before its name appeared.
- Raising ReplicaError means the whole replica is unusable for this run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mailmirror.maildir.names import MESSAGE_SUBDIRS, to_raw
from mailmirror.sync.model import Entry


@dataclass(frozen=True, slots=True)
class Stamp:
    """The mtimes (ns) of a folder's cur/ and new/ directories: names change => stamp changes."""

    cur: int
    new: int


class Outcome(Enum):
    OK = "ok"
    GONE = "gone"  # the source name is no longer there
    EXISTS = "exists"  # the target name is taken
    FAILED = "failed"  # an I/O error on this item only (detail says which)


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


OK = Result(Outcome.OK)


@dataclass(frozen=True, slots=True)
class Ref:
    folder: str
    relname: str


@dataclass(frozen=True, slots=True)
class Rename:
    source: Ref
    target: Ref


@dataclass(frozen=True, slots=True)
class Message:
    """A message's content and its file mtime: Dovecot takes the mtime as the received date."""

    data: bytes
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Delivery:
    target: Ref
    data: bytes
    mtime_ns: int | None = None  # kept on the copy when given


class Replica(Protocol):
    """One Maildir tree, local or remote. See the module docstring for the shared contract."""

    id: str
    label: str
    sep: str
    remote: bool  # calls wait on another machine: the engine reads ahead while they do

    def stored_id(self) -> str | None:
        """The id already in the root's id file, or None: never creates one (reading `id`
        does). The identity check runs on this, before a missing id is replaced."""
        ...

    def clock_ns(self) -> int:
        """The replica's own wall clock, for the mtime safety margin (clocks differ)."""
        ...

    def stamps(self) -> dict[str, Stamp]:
        """Every folder and its stamp. Cheap: no message is listed."""
        ...

    def list(self, folders: Sequence[str],
             subdirs: Sequence[str] = MESSAGE_SUBDIRS) -> dict[str, list[str]]:
        """The relnames of every message in each folder's `subdirs` (cur/ and new/ by
        default); tmp/ and dot files are left out."""
        ...

    def listings(self, folders: Sequence[tuple[str, Sequence[str]]]
                 ) -> Iterator[tuple[str, list[bytes]]]:
        """list() of each (folder, subdirs) in turn, as raw relnames (names.to_raw): the scan
        compares 100,000s of them with the base's and turns into str only those that differ.
        A remote replica works on the next ones meanwhile. The replica may be used for other
        calls between two steps.
        """
        ...

    def sizes(self, refs: Sequence[Ref]) -> list[int | None]:
        """File sizes (None where gone): only for the few keys whose names carry no ,S=."""
        ...

    def keywords(self, folder: str) -> dict[str, str]:
        """The folder's keyword letters: letter -> name."""
        ...

    def add_keywords(self, folder: str, names: Iterable[str]) -> dict[str, str]:
        """Give each name a letter in this folder (as Dovecot does); return letter -> name."""
        ...

    def tombstones(self, keys: Sequence[str]) -> dict[str, Entry]:
        """For each key deleted here before, the entry it had then (see maildir/tombstones)."""
        ...

    def add_tombstones(self, items: Sequence[tuple[str, Entry]]) -> None:
        """Remember that these messages were deleted here, durably."""
        ...

    def create_folder(self, folder: str) -> None:
        """Create the folder with cur/ new/ tmp/ and the maildirfolder marker; idempotent."""
        ...

    def remove_folder(self, folder: str) -> bool:
        """Remove a folder that holds no message any more; False (and untouched) otherwise."""
        ...

    def read(self, refs: Sequence[Ref]) -> list[Message | Result]:
        """Message contents with their mtimes, or a Result saying why one could not be read."""
        ...

    def deliver(self, items: Sequence[Delivery]) -> list[Result]:
        """Write each message to tmp/ (with its mtime), make the batch durable, then publish
        without clobbering."""
        ...

    def deliver_later(self, items: Sequence[Delivery]) -> Callable[[], list[Result]]:
        """deliver() in two steps: this call hands the batch over, the one it returns waits
        for the results. A remote replica writes one batch while the next is sent; calls
        between the two steps are allowed."""
        ...

    def rename(self, items: Sequence[Rename]) -> list[Result]:
        """Atomically rename within the replica (flags, new->cur, folder moves)."""
        ...

    def delete(self, refs: Sequence[Ref]) -> list[Result]:
        """Move messages whose names are still exactly these into the replica's quarantine
        (maildir/quarantine.py), never unlinking them: atomic, no clobbering, durable."""
        ...

    def prune_quarantine(self, keep_days: int) -> int:
        """Remove quarantined messages deleted more than keep_days days ago (by this
        replica's clock); the number removed. A read-only replica removes nothing."""
        ...

    def close(self) -> None:
        ...


def delivered_now(replica: Replica, items: Sequence[Delivery]) -> Callable[[], list[Result]]:
    """deliver_later() for a replica that gains nothing from waiting later."""
    results = replica.deliver(items)
    return lambda: results


def one_by_one(replica: Replica, folders: Sequence[tuple[str, Sequence[str]]]
               ) -> Iterator[tuple[str, list[bytes]]]:
    """listings() for a replica that gains nothing from fetching ahead."""
    for folder, subdirs in folders:
        yield folder, list(map(to_raw, replica.list([folder], subdirs)[folder]))
