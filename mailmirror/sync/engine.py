"""One sync run: scan (I/O) -> plan (pure) -> execute (I/O) -> record.

Execution order per run: folders are created, renames (rekeys, flag changes, moves), deletions,
then copies in batches. A decision's base rows are written only after all of its actions
succeeded, in the same batch as they finish ("record last"). A decision that failed part-way
keeps its old base, except after a rekey, where the base is forgotten so the next run merges
(union) instead of reading the rename as a deletion. Crash invariant: at any point, every
message is in cur/ or new/ on at least one side under its key, or its base says it was deleted;
nothing half-written is ever in cur/ or new/.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mailmirror.errors import UsageError
from mailmirror.maildir.names import fresh_unique, key_of, sort_letters
from mailmirror.maildir.quarantine import DEFAULT_KEEP_DAYS
from mailmirror.replica.base import Delivery, Message, Outcome, Ref, Rename, Replica, Result
from mailmirror.sync import guard, reconcile
from mailmirror.sync.flags import FlagCodec
from mailmirror.sync.model import (
    NEW,
    Conflict,
    Copy,
    Decision,
    Delete,
    Entry,
    Move,
    Plan,
    Rekey,
    Side,
)
from mailmirror.sync.scan import Listing, Loc, Scan, details, odd_info, scan, side_code
from mailmirror.sync.state import BaseRow, FolderRow, SyncState

ProgressFn = Callable[[str, int, int], None]
_Copied = tuple[int, Copy, Result, int]  # decision index, action, outcome, bytes delivered
PLAN_SLICE = 2000  # keys planned and executed together


@dataclass
class SyncOptions:
    prefer: Side = Side.A
    dry_run: bool = False
    full: bool = False
    allow_empty: bool = False
    margin_ns: int = 2_000_000_000
    batch_count: int = 1000
    batch_bytes: int = 2 << 20
    progress: ProgressFn | None = None
    should_stop: Callable[[], bool] | None = None  # checked between slices (watch shutdown)
    allow_mass_delete: bool = False
    max_delete_percent: float = guard.MASS_DELETE_PERCENT
    accept_new_replica: bool = False  # see guard.check_identity, called before sync()
    quarantine_days: int = DEFAULT_KEEP_DAYS


@dataclass
class SyncReport:
    """What a run did, for the summary table, --json and the run history."""

    labels: dict[Side, str]
    counts: Counter[str] = field(default_factory=Counter)
    conflicts: list[Conflict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    plan: Plan | None = None
    dry_run: bool = False
    stopped: bool = False
    waiting: int = 0  # messages a client moved while listed: left for the next run

    @property
    def outcome(self) -> str:
        return "stopped" if self.stopped else "partial" if self.skipped else "ok"

    def to_json(self) -> dict:
        return {
            "outcome": self.outcome,
            "dry_run": self.dry_run,
            "a": self.labels[Side.A],
            "b": self.labels[Side.B],
            "counts": dict(sorted(self.counts.items())),
            "conflicts": [
                {"key": c.key, "kind": c.kind, "resolution": c.resolution} for c in self.conflicts
            ],
            "skipped": self.skipped,
            "notices": self.notices,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
            "waiting": self.waiting,
        }


_COUNTERS = {(kind, s): f"{name} {s.value}" for kind, name in
             ((Move, "move"), (Delete, "delete"), (Rekey, "rekey")) for s in Side}
_COUNTERS.update({(Copy, s): f"copy {s.value}->{s.other.value}" for s in Side})


def describe(action: Copy | Move | Delete | Rekey) -> str:
    """The counter name of an action: kind and direction, e.g. 'copy a->b', 'move b'."""
    return _COUNTERS[type(action), action.source if type(action) is Copy else action.side]


def sync(a: Replica, b: Replica, state: SyncState, options: SyncOptions) -> SyncReport:
    """Bring replicas a and b to the same messages; see the module docstring for the order.

    Raises UsageError when both are the same replica and SafetyStop when the listing looks
    like a mistake (sync/guard.py); callers run guard.check_identity before reading any id.
    Per-message failures do not raise: they are listed in report.skipped.
    """
    started = time.monotonic()
    replicas = {Side.A: a, Side.B: b}
    if a.id == b.id:
        raise UsageError(f"{a.label} and {b.label} are the same replica (same id): "
                         "give two different maildirs")
    low = Side.A if a.id < b.id else Side.B
    ids_labels = (replicas[low].id, replicas[low.other].id,
                  replicas[low].label, replicas[low.other].label)
    pair = state.pair(*ids_labels, create=False)  # a new pair is recorded after the checks
    report = SyncReport({s: r.label for s, r in replicas.items()}, dry_run=options.dry_run)
    if pair.created:
        report.notices.append("first sync of these two replicas: merging both sides, "
                              "nothing is deleted")
    codec = FlagCodec(replicas)
    found = scan(replicas, state, pair.pair_id, low, codec, options.full, options.margin_ns,
                 options.progress)
    guard.check_scan(replicas, found, state, pair.created, options.allow_empty,
                     options.accept_new_replica)
    report.waiting = len(found.moving)
    if found.moving:
        report.notices.append(f"{len(found.moving)} message(s) moved by a mail client while "
                              "the folders were listed: left for the next run")
    tombs = _tombstones(replicas, found)
    keys = found.keys

    def plan_of(chunk: list[str]) -> Plan:
        return reconcile.plan(
            chunk,
            {k: found.base[k].entry for k in chunk if k in found.base},
            {k: found.current[Side.A].entry(k) for k in chunk if k in found.current[Side.A]},
            {k: found.current[Side.B].entry(k) for k in chunk if k in found.current[Side.B]},
            options.prefer,
            tombs,
        )

    deletions = Counter[Side]() if options.allow_mass_delete else _deletions(found, tombs,
                                                                              plan_of)
    if max(deletions.values(), default=0) >= guard.MASS_DELETE_MIN:
        percent = options.max_delete_percent
        if pair.created:
            held = {s: len(found.current[s]) for s in Side}
        else:
            # the base rows of the folders just listed are a lower bound of what each side
            # held: count the whole base (10 ms at 100,000 messages) only when it is too low
            held = dict(found.base_count)
            if guard.too_many_deletions(deletions, held, percent):
                common = state.base_count(pair.pair_id)
                held = {s: common for s in Side}
        guard.check_deletions(replicas, deletions, held, percent)
    report.skipped.extend(found.invalid)
    if options.dry_run:
        plan = report.plan = plan_of(keys)
        report.conflicts.extend(plan.conflicts)
        report.counts.update(describe(x) for x in plan.actions)
        for s, folders in folders_to_create(found, plan, low).items():
            if folders:
                report.counts[f"folder+ {s.value}"] += len(folders)
        report.notices.extend(codec.problems)
        report.seconds = time.monotonic() - started
        return report
    pair = state.pair(*ids_labels)
    run_id = state.start_run(pair.pair_id)
    outcome = "failed"
    try:
        executor = _Executor(replicas, found, codec, state, pair.pair_id, low, report, options)
        executor.start()
        if not keys:
            executor.run(plan_of([]))  # a folder new on one side is created on the other
        # Plan and act in slices of keys: decisions are independent per key, and memory then
        # holds one slice of plan, not a whole first sync's.
        for at in range(0, len(keys), PLAN_SLICE):
            if options.should_stop is not None and options.should_stop():
                report.stopped = True  # every finished slice is recorded; the rest waits
                break
            chunk = keys[at:at + PLAN_SLICE]
            plan = plan_of(chunk)
            report.conflicts.extend(plan.conflicts)
            executor.run(plan)
            executor.forget(chunk)
            if options.progress:
                options.progress("sync", at + len(chunk), len(keys))
        executor.finish(complete=not report.stopped)
        outcome = report.outcome
    finally:
        report.seconds = time.monotonic() - started
        state.end_run(run_id, outcome, report.to_json())
    return report


def _tombstones(replicas: dict[Side, Replica], found: Scan) -> dict[str, Entry]:
    """Tombstones of the absent side, for keys this pair has no base for and one side lacks."""
    wanted: dict[Side, list[str]] = {Side.A: [], Side.B: []}
    for key in found.keys:
        if key in found.base:
            continue
        in_a, in_b = key in found.current[Side.A], key in found.current[Side.B]
        if in_a != in_b:
            wanted[Side.B if in_a else Side.A].append(key)
    out: dict[str, Entry] = {}
    for side, keys in wanted.items():
        out.update(replicas[side].tombstones(sorted(keys)))
    return out


def _deletions(found: Scan, tombs: dict[str, Entry],
               plan_of: Callable[[list[str]], Plan]) -> Counter[Side]:
    """How many messages the run would delete on each side. Only a key one side lacks and
    that has a base row or a tombstone can be deleted, so only those are planned (the
    planner is pure and per key), in slices like the run itself."""
    lacking = sorted(k for k in found.keys
                     if (k in found.current[Side.A]) != (k in found.current[Side.B])
                     and (k in found.base or k in tombs))
    counts: Counter[Side] = Counter()
    for at in range(0, len(lacking), PLAN_SLICE):
        plan = plan_of(lacking[at:at + PLAN_SLICE])
        counts.update(a.side for a in plan.actions if isinstance(a, Delete))
    return counts


def folders_to_create(found: Scan, plan: Plan, low: Side) -> dict[Side, list[str]]:
    """Folders each side lacks: targets of copies and moves, and folders new on the other
    side. A folder deleted here since the last sync is not recreated (it goes there)."""
    out = {}
    for s in Side:
        have = set(found.stamps[s])
        want = {a.entry.folder for a in plan.actions if isinstance(a, Copy | Move) and a.side is s}
        code = side_code(s, low)
        want.update(f for f in found.stamps[s.other] if (f, code) not in found.known)
        out[s] = sorted(want - have)
    return out


def _ref(loc: Loc) -> Ref:
    return Ref(loc.entry.folder, loc.relname)


def _same_bytes(read: list[Message | Result]) -> bool:
    first, second = read
    return isinstance(first, Message) and isinstance(second, Message) and first.data == second.data


T = TypeVar("T")


class _Executor:
    """Applies a plan to both replicas and records the base as decisions complete."""

    def __init__(self, replicas: dict[Side, Replica], found: Scan, codec: FlagCodec,
                 state: SyncState, pair_id: int, low: Side, report: SyncReport,
                 options: SyncOptions) -> None:
        self.replicas = replicas
        self.found = found
        self.codec = codec
        self.state = state
        self.pair_id = pair_id
        self.low = low
        self.report = report
        self.options = options
        self.locs: dict[Side, Listing] = found.current  # gains rekeyed names
        self.names: dict[Side, dict[str, str]] = {Side.A: {}, Side.B: {}}  # until recorded
        self.pending: list[int] = []
        self.failed: set[int] = set()
        self.decisions: list[Decision] = []
        self.ready: list[tuple[str, BaseRow | None]] = []
        self.touched: set[tuple[Side, str]] = set()
        self.removed: set[tuple[Side, str]] = set()  # folders this run removed itself
        self.unsettled: set[tuple[Side, str]] = set(found.unsettled)
        self.created: set[tuple[Side, str]] = set()
        self.tombs: dict[Side, list[tuple[str, Entry]]] = {Side.A: [], Side.B: []}
        for key in found.keys:  # deletions users made since the last sync
            row = found.base.get(key)
            for s in Side:
                if row is not None and key not in found.current[s]:
                    self.tombs[s].append((key, row.entry))

    # -- driving -------------------------------------------------------------------------
    def start(self) -> None:
        self._fix_duplicates()

    def run(self, plan: Plan) -> None:
        """Execute one slice of the plan; its base rows are written before this returns."""
        self.decisions, self.pending, self.failed = [], [], set()  # indices are per slice
        renames: dict[Side, list[tuple[int, Rekey | Move]]] = {Side.A: [], Side.B: []}
        deletes: dict[Side, list[tuple[int, Delete]]] = {Side.A: [], Side.B: []}
        copies: list[tuple[int, Copy]] = []
        for i, decision in enumerate(plan.decisions):
            self.decisions.append(decision)
            self.pending.append(len(decision.actions))
            if not decision.actions:
                self._finish(i)
            for action in decision.actions:
                if isinstance(action, Copy):
                    copies.append((i, action))
                elif isinstance(action, Delete):
                    deletes[action.side].append((i, action))
                else:
                    renames[action.side].append((i, action))
        self._create_folders(plan)
        for s in Side:
            self._renames(s, renames[s])
            self._deletes(s, deletes[s])
        self._flush_base()
        self._copies(self._unfailed(copies))
        self._flush_base()

    def _unfailed(self, copies: list[tuple[int, Copy]]) -> list[tuple[int, Copy]]:
        """The copies whose decision has not failed yet; the others fail without acting.

        A split (same key, different content) renames one side's message to a fresh key,
        then copies the other's under the key: when a mail client renamed that message
        meanwhile, the Rekey fails and the copy would give the side two messages under one
        key, one of which the next run could spread as a duplicate. The next run splits again.
        """
        kept = []
        for i, action in copies:
            if i in self.failed:
                self._done(i, action, Result(Outcome.FAILED, "not copied, as another step of "
                                             "the same change failed: retried next run"))
            else:
                kept.append((i, action))
        return kept

    def forget(self, keys: list[str]) -> None:
        """Drop what the scan held for keys whose slice is done (memory of a first sync)."""
        for s in Side:
            locs = self.locs[s]
            for key in keys:
                locs.pop(key, None)

    def finish(self, complete: bool = True) -> None:
        """Record what the run did; an incomplete run leaves folder stamps alone, so the next
        run lists those folders again."""
        if complete:
            self._remove_deleted_folders()
        for s in Side:
            self.replicas[s].add_tombstones(self.tombs[s])
            self.replicas[s].prune_quarantine(self.options.quarantine_days)
        if complete:
            self._record_folders()
        self.report.notices.extend(self.codec.problems)

    def _done(self, i: int, action: object, result: Result) -> None:
        if result.ok:
            self.report.counts[describe(action)] += 1  # type: ignore[arg-type]
            if isinstance(action, Delete):
                entry = self.locs[action.side][action.key].entry
                self.tombs[action.side].append((action.key, entry))
        else:
            self.failed.add(i)
            self._unsettle(self.decisions[i].key)
            what = describe(action)  # type: ignore[arg-type]
            reason = result.detail or {
                Outcome.GONE: "changed meanwhile, retried next run",
                Outcome.EXISTS: "target name already exists, retried next run",
            }.get(result.outcome, result.outcome.value)
            self.report.skipped.append(f"{what} {self.decisions[i].key}: {reason}")
        self.pending[i] -= 1
        if self.pending[i] == 0:
            self._finish(i)

    def _finish(self, i: int) -> None:
        decision = self.decisions[i]
        if i in self.failed:
            if any(isinstance(a, Rekey) for a in decision.actions):
                self.ready.extend((k, None) for k in decision.base)
            return
        low, high = self.low, self.low.other
        rows = decision.base.items() if decision.extra else ((decision.key, decision.new_base),)
        for key, entry in rows:
            if entry is None:
                self.ready.append((key, None))
                continue
            names = (self.names[low].pop(key, None) or self.locs[low].relname(key),
                     self.names[high].pop(key, None) or self.locs[high].relname(key))
            self.ready.append((key, BaseRow(entry, names)))

    def _flush_base(self) -> None:
        if self.ready:
            self.state.write_base(self.pair_id, self.ready)
            self.ready = []

    def _unsettle(self, key: str) -> None:
        for s in Side:
            loc = self.locs[s].get(key)
            if loc is not None:
                self.unsettled.add((s, loc.entry.folder))
        row = self.found.base.get(key)
        if row is not None:
            self.unsettled.update((s, row.entry.folder) for s in Side)

    # -- names ---------------------------------------------------------------------------
    def _relname(self, side: Side, key: str, entry: Entry, loc: Loc | None,
                 unique: str | None = None, raw_info: str | None = None) -> str:
        """The file name `entry` gets on `side`; letters and info follow that side's rules.

        An info that is not "2,..." (`raw_info`, or the one on disk at `loc`) is kept verbatim.
        """
        letters = self.codec.encode(side, entry.folder, entry.flags)
        if raw_info is not None and not letters:
            return f"{entry.subdir}/{unique or key}{self.replicas[side].sep}{raw_info}"
        if loc is not None and loc.entry.folder == entry.folder:
            on_disk, opaque, raw_info = details(self.replicas[side], self.codec, side, loc)
            unique = unique or on_disk
            letters = sort_letters(letters + opaque)
            if raw_info is not None and not letters:
                return f"{entry.subdir}/{unique}{self.replicas[side].sep}{raw_info}"
        unique = unique or key
        if entry.subdir == NEW and not letters:
            return f"{NEW}/{unique}"
        return f"{entry.subdir}/{unique}{self.replicas[side].sep}2,{letters}"

    # -- phases --------------------------------------------------------------------------
    def _fix_duplicates(self) -> None:
        """A key present twice on one side.

        Two names of one folder with the same bytes are one message twice: another sync
        copied it in meanwhile under other flags (two pairs writing into one replica), or a
        rename on a file system without renameat2 stopped between link and unlink. One name
        goes to the quarantine and the other gets both names' flags. Anything else is two
        messages (a copied file): the extra gets a fresh key.

        A client renaming a message between (or during) the listings of cur/ and new/ shows
        one file under two names; renaming one of them then gave that message a second key.
        So both names must still be there now; otherwise the folder is listed again next run.
        """
        for s, listed in self.found.duplicates.items():
            replica = self.replicas[s]
            found = []  # (extra name, its unique part on disk, the name that kept the key)
            for loc in listed:
                on_disk = details(replica, self.codec, s, loc)[0]
                found.append((loc, on_disk, self.locs[s][key_of(on_disk)]))
            there = replica.sizes([_ref(loc) for extra, _, kept in found for loc in (extra, kept)])
            extras, twins = [], []
            for i, (extra, on_disk, kept) in enumerate(found):
                sizes = there[2 * i:2 * i + 2]
                if None in sizes:
                    self.unsettled.update((s, loc.entry.folder) for loc in (extra, kept))
                elif (sizes[0] == sizes[1] and extra.entry.folder == kept.entry.folder
                      and _same_bytes(replica.read([_ref(extra), _ref(kept)]))):
                    twins.append((extra, key_of(on_disk), kept))
                else:
                    extras.append((extra, on_disk))
            self._merge_twins(s, twins)
            items, notes = [], []
            for loc, on_disk in extras:
                new_unique = fresh_unique(key_of(on_disk), loc.relname)
                target = self._relname(s, new_unique, loc.entry, loc, unique=new_unique)
                items.append(Rename(_ref(loc), Ref(loc.entry.folder, target)))
                notes.append(f"{loc.entry.folder}/{loc.relname} duplicated another message's "
                             f"name on {self.replicas[s].label}: renamed, synced next run")
                self.touched.add((s, loc.entry.folder))
                self.unsettled.add((s, loc.entry.folder))
            for note, result in zip(notes, self.replicas[s].rename(items), strict=True):
                self.report.notices.append(note if result.ok else f"{note} (failed: {result})")

    def _merge_twins(self, side: Side, twins: list[tuple[Loc, str, Loc]]) -> None:
        """Keep one name of each message found twice (the one in cur/), with the flags of both;
        the other goes to the quarantine. A third name of a key waits for the next run."""
        replica, done = self.replicas[side], set()
        for extra, key, kept in twins:
            folder = kept.entry.folder
            self.touched.add((side, folder))
            self.unsettled.add((side, folder))
            if key in done:
                continue
            done.add(key)
            in_cur = extra.entry.subdir != NEW and kept.entry.subdir == NEW
            keep, drop = (extra, kept) if in_cur else (kept, extra)
            note = (f"{folder}/{drop.relname} was a second copy of {folder}/{keep.relname} on "
                    f"{replica.label}: moved to the quarantine")
            result = replica.delete([_ref(drop)])[0]
            if not result.ok:
                self.report.notices.append(f"{note} (failed: {result})")
                continue
            self.report.notices.append(note)
            self.locs[side][key] = keep
            both = keep.entry.moved(flags=keep.entry.flags | drop.entry.flags)
            if both.flags != keep.entry.flags:
                target = self._relname(side, key, both, keep)
                if replica.rename([Rename(_ref(keep), Ref(folder, target))])[0].ok:
                    self.locs[side][key] = Loc(both, target)

    def _create_folders(self, plan: Plan) -> None:
        for s, folders in folders_to_create(self.found, plan, self.low).items():
            for folder in folders:
                if (s, folder) in self.created:
                    continue
                self.created.add((s, folder))
                try:
                    self.replicas[s].create_folder(folder)
                except (OSError, ValueError) as exc:
                    # the folder's deliveries fail one by one; the rest of the run goes on
                    self.report.skipped.append(f"folder+ {s.value} {folder}: {exc}")
                    continue
                self.touched.add((s, folder))
                self.report.counts[f"folder+ {s.value}"] += 1

    def _renames(self, side: Side, work: list[tuple[int, Rekey | Move]]) -> None:
        if not work:
            return
        items = []
        for _, action in work:
            loc = self.locs[side][action.key]
            if isinstance(action, Rekey):
                new_unique = action.new_key
                target = self._relname(side, new_unique, loc.entry, loc, unique=new_unique)
                self.names[side][action.new_key] = target
                self.locs[side][action.new_key] = Loc(loc.entry, target)
                dest_folder = loc.entry.folder
            else:
                target = self._relname(side, action.key, action.entry, loc)
                self.names[side][action.key] = target
                dest_folder = action.entry.folder
            items.append(Rename(_ref(loc), Ref(dest_folder, target)))
            self.touched.update(((side, loc.entry.folder), (side, dest_folder)))
        results = self._chunked(self.replicas[side].rename, items)
        for (i, action), result in zip(work, results, strict=True):
            self._done(i, action, result)

    def _deletes(self, side: Side, work: list[tuple[int, Delete]]) -> None:
        if not work:
            return
        refs = []
        for _, action in work:
            loc = self.locs[side][action.key]
            refs.append(_ref(loc))
            self.touched.add((side, loc.entry.folder))
        results = self._chunked(self.replicas[side].delete, refs)
        for (i, action), result in zip(work, results, strict=True):
            self._done(i, action, result)

    def _chunked(self, op: Callable[[list], list[T]], items: list) -> list[T]:
        """op over items, batch_count at a time (a request's worth for a remote replica)."""
        out: list[T] = []
        step = self.options.batch_count
        for start in range(0, len(items), step):
            out.extend(op(items[start:start + step]))
        return out

    def _copies(self, work: list[tuple[int, Copy]]) -> None:
        """Copy in batches, in threads, while the main thread records finished batches.

        A batch's base rows are written only after its delivery returned, so a crash leaves
        at worst published messages with no base row, which the next run merges.
        """
        for source in Side:
            group = sorted((w for w in work if w[1].source is source),
                           key=lambda w: (w[1].entry.folder, w[1].key))
            sizes = self._unnamed_sizes(source, [action for _, action in group])
            batches: list[list[tuple[int, Copy]]] = [[]]
            size = 0
            for item in group:
                if (len(batches[-1]) >= self.options.batch_count
                        or size >= self.options.batch_bytes):
                    batches.append([])
                    size = 0
                batches[-1].append(item)
                size += item[1].entry.size or sizes.get(item[1].key) or 65536
            batches = [b for b in batches if b]
            if not batches:
                continue
            if any(r.remote for r in self.replicas.values()):
                self._copy_pipelined(batches)
            else:
                self._copy_in_turn(batches)

    def _unnamed_sizes(self, source: Side, copies: list[Copy]) -> dict[str, int]:
        """Sizes of the messages to copy whose names do not carry one (no ,S=).

        Batches are cut by bytes: a guess put several huge messages in one batch, whose
        read reply could pass what one frame may hold, on every run.
        """
        unknown = [action for action in copies if action.entry.size is None]
        locs = self.locs[source]
        sizes = self._chunked(self.replicas[source].sizes, [_ref(locs[a.key]) for a in unknown])
        return {a.key: size for a, size in zip(unknown, sizes, strict=True) if size is not None}

    def _copy_in_turn(self, batches: list[list[tuple[int, Copy]]]) -> None:
        """Both sides local: one worker reads and delivers batch n while batch n-1 is recorded.

        A reader thread of its own only added GIL hand-offs between three busy threads: a
        first copy of 100,000 messages took 15% longer and twice the system time here.
        """
        from concurrent.futures import ThreadPoolExecutor  # only runs that copy

        def copy(batch: list[tuple[int, Copy]]) -> list[_Copied]:
            return self._deliver_batch(batch, self._read_batch(batch))()

        with ThreadPoolExecutor(1, "mailmirror-copy") as worker:
            pending = worker.submit(copy, batches[0])
            for batch in batches[1:]:
                done, pending = pending.result(), worker.submit(copy, batch)
                self._record_batch(done)
            self._record_batch(pending.result())

    def _copy_pipelined(self, batches: list[list[tuple[int, Copy]]]) -> None:
        """A remote side: three threads, like rsync's three processes.

        While batch n is sent (writer thread), batch n+1 is read (reader thread), the far side
        writes batch n-1, and the main thread records batch n-2: the writer collects batch
        n-1's outcomes only once n is sent, so the far side always has a batch to write. Two
        batches of message bytes are held at most: the one being sent, the one being read.
        """
        from concurrent.futures import Future, ThreadPoolExecutor  # only runs that copy

        def send(batch: list[tuple[int, Copy]], messages: list[Message | Result],
                 sent_before: Callable[[], list[_Copied]]
                 ) -> tuple[list[_Copied], Callable[[], list[_Copied]]]:
            sent = self._deliver_batch(batch, messages)
            return sent_before(), sent

        with (ThreadPoolExecutor(1, "mailmirror-read") as reader,
              ThreadPoolExecutor(1, "mailmirror-write") as writer):
            pending = reader.submit(self._read_batch, batches[0])
            sending: Future[tuple[list[_Copied], Callable[[], list[_Copied]]]] | None = None
            sent: Callable[[], list[_Copied]] = list  # nothing was sent before batch 0
            for n in range(len(batches)):
                messages = pending.result()
                # two batches of bytes at most: batch n-1 is sent before n+1 is read
                copied: list[_Copied] = []
                if sending is not None:
                    copied, sent = sending.result()
                if n + 1 < len(batches):
                    pending = reader.submit(self._read_batch, batches[n + 1])
                sending = writer.submit(send, batches[n], messages, sent)
                del messages
                self._record_batch(copied)
            if sending is not None:
                copied, sent = sending.result()
                self._record_batch(copied)
                self._record_batch(sent())

    def _read_batch(self, batch: list[tuple[int, Copy]]) -> list[Message | Result]:
        source = batch[0][1].source
        locs = self.locs[source]
        refs = [_ref(locs[a.key]) for _, a in batch]
        return self.replicas[source].read(refs)

    def _deliver_batch(self, batch: list[tuple[int, Copy]],
                       messages: list[Message | Result]) -> Callable[[], list[_Copied]]:
        """Hand one batch to its target; the call returned waits for the outcomes, which go
        to _record_batch (main thread)."""
        target = batch[0][1].side
        locs, sep = self.locs[target.other], self.replicas[target.other].sep
        names = self.names[target]
        deliveries, waiting, out = [], [], []
        for (i, action), message in zip(batch, messages, strict=True):
            if isinstance(message, Result):
                out.append((i, action, message, 0))
                continue
            loc = locs.get(action.key)
            # the source's info when it is not "2,...": a copy keeps it verbatim
            raw_info = odd_info(loc.relname, sep) if loc is not None else None
            relname = self._relname(target, action.key, action.entry, None, raw_info=raw_info)
            names[action.key] = relname
            self.touched.add((target, action.entry.folder))
            deliveries.append(Delivery(Ref(action.entry.folder, relname), message.data,
                                       message.mtime_ns))
            waiting.append((i, action, len(message.data)))
        del messages
        if not deliveries:
            return lambda: out
        results = self.replicas[target].deliver_later(deliveries)

        def outcomes() -> list[_Copied]:
            return out + [(i, action, result, nbytes) for (i, action, nbytes), result
                          in zip(waiting, results(), strict=True)]

        return outcomes

    def _record_batch(self, copied: list[_Copied]) -> None:
        if not copied:
            return
        for i, action, result, nbytes in copied:
            if result.ok:
                self.report.bytes += nbytes
            self._done(i, action, result)
        self._flush_base()

    def _remove_deleted_folders(self) -> None:
        """A folder deleted on one side goes on the other once no message is left in it."""
        found = self.found
        for s in Side:
            code = side_code(s, self.low)
            other = self.replicas[s.other]
            for folder in sorted(found.stamps[s.other]):
                if folder in found.stamps[s] or (folder, code) not in found.known:
                    continue
                if (s, folder) in self.touched:
                    continue  # recreated here to keep changed mail: not a deletion any more
                if other.list([folder])[folder]:
                    continue
                if other.remove_folder(folder):
                    self.report.counts[f"folder- {s.other.value}"] += 1
                    self.removed.add((s.other, folder))
                self.touched.add((s.other, folder))

    def _record_folders(self) -> None:
        found, margin = self.found, self.options.margin_ns
        after = {s: self.replicas[s].stamps() for s in Side
                 if any(t[0] is s for t in self.touched)}
        rows: dict[tuple[str, str], FolderRow | None] = {}
        for s in Side:
            code = side_code(s, self.low)
            folders = set(found.stamps[s]) | set(after.get(s, {})) | found.dirty[s]
            for folder in folders:
                if (s, folder) in self.touched:
                    stamp = after[s].get(folder)
                    row = found.known.get((folder, code))
                    if stamp:
                        rows[(folder, code)] = FolderRow(stamp, False)
                    elif (row is not None and folder in found.stamps[s]
                          and (s, folder) not in self.removed):
                        # gone while the run acted in it (a client renamed or deleted it):
                        # the row stays, so the next run sees a deletion here, not a folder
                        # new on the other side to create again
                        rows[(folder, code)] = FolderRow(row.stamp, False)
                    else:
                        rows[(folder, code)] = None
                elif folder in found.dirty[s]:
                    stamp = found.stamps[s].get(folder)
                    if stamp is None:
                        rows[(folder, code)] = None
                        continue
                    limit = found.clock[s] - margin
                    old = stamp.cur < limit and stamp.new < limit
                    settled = (s, folder) not in self.unsettled and not found.invalid
                    rows[(folder, code)] = FolderRow(stamp, old and settled)
                elif (s, folder) in self.unsettled:
                    row = found.known.get((folder, code))
                    rows[(folder, code)] = FolderRow(row.stamp if row else None, False)
        self.state.write_folders(self.pair_id, rows)
