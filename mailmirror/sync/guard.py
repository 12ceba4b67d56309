"""Safety stops: a run that looks dangerous ends before it changes anything.

A sync trusts what it lists. When a disk is not mounted, an address reaches the wrong server, a
folder suddenly lists nothing, or a run would delete most of a maildir, trusting the listing
would delete mail (into the quarantine, but still) on the other side. Each check raises
SafetyStop (exit 3) with one line naming what looked wrong and how to go on; the rules are
written down in docs/spec.md (S5, S9-S12). Decisions only: they read replicas' ids and the
state store, and change nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from mailmirror.errors import SafetyStop, UsageError
from mailmirror.maildir.quarantine import DEFAULT_KEEP_DAYS, MAX_KEEP_DAYS
from mailmirror.replica.base import Replica
from mailmirror.sync.model import Side
from mailmirror.sync.scan import Scan
from mailmirror.sync.state import SyncState

EMPTY_GUARD = 10  # a replica that held this many messages and now lists none stops the run
FOLDER_GUARD = 20  # likewise for one folder whose messages would be deleted on the other side
STRANGER_GUARD = 10  # a replica new at a known address must share mail with a side this big
MASS_DELETE_MIN = 20  # fewer deletions than this never count as a mass deletion
MASS_DELETE_PERCENT = 50.0
# Folders people empty on purpose, all at once: emptying them is not a safety stop.
EMPTIED_ON_PURPOSE = frozenset({"trash", "junk", "spam", "deleted", "deleted items",
                                "deleted messages", "bin"})


@dataclass(frozen=True)
class Safety:
    """The safety settings a user gives: the command line wins over the profile, the
    profile over the defaults."""

    allow_mass_delete: bool = False
    max_delete: float | None = None  # percent
    accept_new_replica: bool = False
    quarantine_days: int | None = None

    def options(self, max_delete: float | None = None,
                quarantine_days: int | None = None) -> dict[str, object]:
        """SyncOptions fields, with a profile's max_delete and quarantine_days as fallbacks."""
        percent = next((p for p in (self.max_delete, max_delete) if p is not None),
                       MASS_DELETE_PERCENT)
        days = next((d for d in (self.quarantine_days, quarantine_days) if d is not None),
                    DEFAULT_KEEP_DAYS)
        if not 0 <= percent <= 100:
            raise UsageError(f"--max-delete must be a percentage from 0 to 100, not {percent:g}")
        if not 0 <= days <= MAX_KEEP_DAYS:
            raise UsageError(f"--quarantine-days must be 0 to {MAX_KEEP_DAYS}, not {days}")
        return {"allow_mass_delete": self.allow_mass_delete, "max_delete_percent": percent,
                "accept_new_replica": self.accept_new_replica, "quarantine_days": days}


def check_identity(state: SyncState, replicas: dict[Side, Replica], accept: bool) -> None:
    """Stop when a path or address that reached a replica before now has no id file.

    Run before anything reads `replica.id`, which would create a new id and hide the loss:
    a maildir that lost its `mailmirror-id` is an unmounted disk (the mount point is an
    empty directory), a wrong host or path, or a restored tree, and must not sync as new.
    """
    if accept:
        return
    for replica in replicas.values():
        seen = state.ids_seen_at(replica.label)
        if seen and replica.stored_id() is None:
            raise SafetyStop(
                f"{replica.label} has no mailmirror-id but was replica {min(seen)[:8]} at the "
                "last sync: is the disk mounted, is it the right host and path? Nothing was "
                "deleted; restore the id file if it is the same maildir, or rerun with "
                "--accept-new-replica if it is a new one")


def check_scan(replicas: dict[Side, Replica], found: Scan, state: SyncState, new_pair: bool,
               allow_empty: bool, accept: bool) -> None:
    """Stop before acting on a listing that looks like a mistake; see the module docstring."""
    if not allow_empty:
        _check_not_emptied(replicas, found)
    if new_pair and not accept:
        _check_not_a_stranger(replicas, found, state)


def too_many_deletions(deletions: Counter[Side], held: dict[Side, int], percent: float) -> bool:
    """Whether check_deletions would stop with these figures."""
    return any(_too_many(deletions[s], held[s], percent) for s in Side)


def _too_many(count: int, held: int, percent: float) -> bool:
    return count >= MASS_DELETE_MIN and count * 100 > percent * max(held, 1)


def check_deletions(replicas: dict[Side, Replica], deletions: Counter[Side],
                    held: dict[Side, int], percent: float) -> None:
    """Stop when a run would delete more than `percent` of what a side holds (and at least
    MASS_DELETE_MIN messages)."""
    for s in Side:
        count = deletions[s]
        if not _too_many(count, held[s], percent):
            continue
        share = 100 * count / max(held[s], count)
        raise SafetyStop(
            f"this sync would delete {count} of the {held[s]} messages of {replicas[s].label} "
            f"({share:.0f}%, more than the {percent:g}% allowed): nothing was changed; if "
            "those deletions are right, rerun with --allow-mass-delete (deleted mail stays "
            "in the quarantine: mailmirror quarantine list)")


def _check_not_emptied(replicas: dict[Side, Replica], found: Scan) -> None:
    """A whole replica, or a folder, that lists nothing where the base knows messages."""
    for s in Side:
        expected = found.base_count[s]
        whole = set(found.stamps[s]) <= found.dirty[s] and not found.partial.get(s)
        if whole and expected >= EMPTY_GUARD and found.listed_count[s] == 0:
            raise SafetyStop(
                f"{replicas[s].label} looks empty but held {expected} messages at the last sync: "
                "is the disk mounted? Nothing was changed; rerun with --allow-empty if the "
                "mail really was deleted")
    lost: dict[tuple[Side, str], int] = Counter()
    for key in found.keys:
        row = found.base.get(key)
        if row is None:
            continue
        for s in Side:
            if key not in found.current[s] and key in found.current[s.other] \
                    and row.entry.folder in found.emptied[s]:
                lost[(s, row.entry.folder)] += 1
    for (s, folder), count in sorted(lost.items(), key=lambda x: (x[0][0].value, x[0][1])):
        if count >= FOLDER_GUARD and folder.rsplit("/", 1)[-1].lower() not in EMPTIED_ON_PURPOSE:
            raise SafetyStop(
                f"folder {folder} of {replicas[s].label} is suddenly empty: syncing would delete "
                f"its {count} messages on {replicas[s.other].label}. Nothing was changed; "
                "rerun with --allow-empty if they really were deleted")


def _check_not_a_stranger(replicas: dict[Side, Replica], found: Scan,
                          state: SyncState) -> None:
    """An address that reached another replica before, and now reaches one that shares no
    message with the other side, is the wrong server, user or path (or an empty disk).

    A DNS failover to the backup server passes: the backup holds the same mail.
    """
    shared = any(key in found.current[Side.B] for key in found.current[Side.A])
    if shared:
        return
    for s in Side:
        replica = replicas[s]
        seen = state.ids_seen_at(replica.label)
        other = len(found.current[s.other])
        if seen and replica.id not in seen and other >= STRANGER_GUARD:
            raise SafetyStop(
                f"{replica.label} now reaches replica {replica.id[:8]} (it was "
                f"{min(seen)[:8]}), which holds none of the {other} messages of "
                f"{replicas[s.other].label}: wrong host, user or path, or an empty disk? "
                "Nothing was changed; rerun with --accept-new-replica if it is the right "
                "maildir")
