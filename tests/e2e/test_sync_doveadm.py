"""Two maildirs changed by Dovecot (doveadm), synced by `mailmirror sync`, checked by Python's
mailbox module and by doveadm on the other side. Scenarios: issue 2, Acceptance.

Each scenario runs three times (conftest's `pair` fixture): B as a local path, B over SSH
through `mailmirror agent`, and B over SFTP, through a real sshd (issue 3, Acceptance)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.conftest import (
    DOVECOT_FILE_PREFIXES,
    INBOX,
    Pair,
    Replica,
    User,
    letters,
    tree_listing,
)


def by_id(messages: list) -> dict:
    out: dict = {}
    for m in messages:
        out.setdefault(m.message_id, []).append(m)
    return out


def test_first_sync_copies_everything(pair: Pair) -> None:
    m1 = pair.a.save("first-1")
    m2 = pair.a.save("first-2")
    pair.a.flags_add(m2, "\\Seen", "\\Flagged")
    pair.a.create("Lists/Debian")
    m3 = pair.a.save("first-3", folder="Lists/Debian")
    m4 = pair.b.save("first-4")
    pair.b.create("Work")
    m5 = pair.b.save("first-5", folder="Work")
    pair.b.flags_add(m5, "\\Answered")

    run = pair.sync()

    assert run.counts.get("copy a->b") == 3, run.json
    assert run.counts.get("copy b->a") == 2, run.json
    pair.assert_in_sync()
    for side in (pair.a, pair.b):
        got = {m.message_id: (m.folder, m.subdir, m.flags) for m in side.messages()}
        assert got[m1] == (INBOX, "new", "")
        assert got[m2][:1] == (INBOX,) and got[m2][2] == "FS"
        assert got[m3] == ("Lists/Debian", "new", "")
        assert got[m4] == (INBOX, "new", "")
        assert got[m5][0] == "Work" and got[m5][2] == "R"
    # Dovecot on each side sees the other side's mail, with the same flags
    assert pair.b.flags(m2) == {"\\Seen", "\\Flagged"}
    assert pair.a.flags(m5) == {"\\Answered"}
    assert pair.a.one(m5).folder == "Work" and pair.b.one(m3).folder == "Lists/Debian"


def test_concurrent_flag_changes_merge_without_duplicate(pair: Pair) -> None:
    msgid = pair.a.save("flags")
    pair.a.flags_add(msgid, "\\Seen")
    other = pair.a.save("bystander")
    pair.sync()

    pair.a.flags_add(msgid, "\\Flagged")  # A: S -> FS
    pair.b.flags_remove(msgid, "\\Seen")  # B: S -> R
    pair.b.flags_add(msgid, "\\Answered")
    run = pair.sync()

    assert run.json["conflicts"] == [], run.json
    # (a & b) | (a - base) | (b - base) = {} | {F} | {R}
    for side in (pair.a, pair.b):
        mine = [m for m in side.messages() if m.message_id == msgid]
        assert len(mine) == 1, f"{side.name}: {mine}"
        assert mine[0].flags == "FR", f"{side.name}: {mine[0]}"
        assert side.flags(msgid) == {"\\Flagged", "\\Answered"}
        assert len(side.find(other)) == 1
    pair.assert_in_sync()
    pair.assert_nothing_planned()


def test_delete_vs_unchanged_deletes_on_both(pair: Pair) -> None:
    gone = pair.a.save("delete-me")
    kept = pair.a.save("keep-me")
    pair.sync()
    assert len(pair.b.find(gone)) == 1

    pair.a.expunge(gone)
    run = pair.sync()

    assert run.counts == {"delete b": 1}, run.json
    for side in (pair.a, pair.b):
        ids = [m.message_id for m in side.messages()]
        assert gone not in ids and ids.count(kept) == 1
        assert side.find(gone) == []
    pair.assert_nothing_planned()


def test_delete_vs_flag_change_keeps_message_and_reports(pair: Pair) -> None:
    msgid = pair.a.save("contested")
    pair.a.save("bystander")  # so A does not look emptied (the safety stop)
    pair.sync()

    pair.a.expunge(msgid)
    pair.b.flags_add(msgid, "\\Flagged")
    run = pair.sync()

    (unique,) = [m.path.name.split(":")[0] for m in pair.b.messages() if m.message_id == msgid]
    conflicts = run.json["conflicts"]
    assert len(conflicts) == 1, f"delete vs change not reported once: {run.json}"
    assert conflicts[0]["key"] in unique and conflicts[0]["resolution"], conflicts
    for side in (pair.a, pair.b):
        mine = [m for m in side.messages() if m.message_id == msgid]
        assert len(mine) == 1, f"{side.name}: {mine}"
        assert "F" in mine[0].flags
        assert "\\Flagged" in side.flags(msgid)
    pair.assert_in_sync()
    pair.assert_nothing_planned()


def test_folder_moves_follow(pair: Pair) -> None:
    pair.a.create("Archive")
    pair.a.create("Lists/Debian")
    m1 = pair.a.save("move-1")
    m2 = pair.a.save("move-2")
    m3 = pair.a.save("move-3", folder="Lists/Debian")
    pair.sync()

    pair.a.move(m1, "Archive")  # moved on A
    pair.b.move(m2, "Lists/Debian")  # moved on B
    pair.b.move(m3, INBOX)  # out of a subfolder on B
    run = pair.sync()

    assert run.json["conflicts"] == [], run.json
    assert not any(k.startswith("copy") for k in run.counts), f"a move was copied: {run.json}"
    for side in (pair.a, pair.b):
        where = {m.message_id: m.folder for m in side.messages()}
        assert where == {m1: "Archive", m2: "Lists/Debian", m3: INBOX}, side.name
        assert side.one(m1).folder == "Archive"
        assert side.one(m2).folder == "Lists/Debian"
        assert side.one(m3).folder == INBOX
    pair.assert_in_sync()
    pair.assert_nothing_planned()


def test_new_to_cur_follows(pair: Pair) -> None:
    msgid = pair.a.save("read-me")
    pair.sync()
    (on_b,) = pair.b.messages()
    assert (on_b.subdir, on_b.flags) == ("new", "")

    pair.b.rename_file(msgid, "cur", "S")  # a client on B reads it: new/X -> cur/X:2,S
    run = pair.sync()

    assert run.counts == {"move a": 1}, run.json
    (on_a,) = pair.a.messages()
    assert (on_a.subdir, on_a.flags) == ("cur", "S")
    assert pair.a.flags(msgid) == {"\\Seen"}
    pair.assert_in_sync()
    pair.assert_nothing_planned()


def test_second_sync_plans_nothing(pair: Pair) -> None:
    pair.a.create("Lists/Debian")
    ids = [pair.a.save(f"idem-{i}", folder=("Lists/Debian" if i % 2 else INBOX))
           for i in range(6)]
    pair.a.flags_add(ids[0], "\\Seen", "$Label1")
    pair.b.save("idem-b")
    pair.b.create("Empty")
    first = pair.sync()
    assert first.counts, first.json

    # changes on both sides, then a sync that applies them: the run after it plans nothing
    pair.a.flags_add(ids[1], "\\Flagged", "$Label2")
    pair.b.move(ids[2], "Empty")
    pair.b.expunge(ids[3])
    pair.a.save("idem-late")
    pair.sync()
    pair.assert_nothing_planned()
    pair.assert_in_sync()


def test_dovecot_files_and_tmp_are_never_copied(pair: Pair) -> None:
    pair.a.create("Lists/Debian")
    m1 = pair.a.save("dc-1")
    pair.a.flags_add(m1, "\\Seen", "$Label1")
    pair.a.save("dc-2", folder="Lists/Debian")
    for folder in (pair.a.root, pair.a.root / ".Lists.Debian"):
        (folder / "tmp" / "1700000000.M1P1.half-delivered").write_bytes(b"Subject: partial\n")
        (folder / "maildirsize").write_text("0S,0C\n")
    pair.a.user.own(pair.a.root)
    names_on_a = {p for p in pair.a.files() if os.path.basename(p).startswith("dovecot")}
    assert any("dovecot-uidlist" in p for p in names_on_a), names_on_a
    assert any("dovecot.index" in p for p in names_on_a), names_on_a
    assert any("dovecot-keywords" in p for p in names_on_a), names_on_a

    pair.sync()  # B does not exist yet: mailmirror creates it

    files_b = pair.b.files()
    for path in files_b:
        base = os.path.basename(path)
        assert not base.startswith(DOVECOT_FILE_PREFIXES), f"copied Dovecot file {path}"
        assert base != "maildirsize" and not base.startswith("courierimap"), path
        assert "/tmp/" not in f"/{path}", f"copied tmp/ content {path}"
    # a keyword file on B, if any, is B's own (written by sync), never A's file copied
    files_a = pair.a.files()
    for path, digest in files_b.items():
        if os.path.basename(path) == "dovecot-keywords":
            assert (pair.b.root / path).read_text() == "0 $Label1\n"
        elif path in files_a and not path.startswith(("cur/", "new/")) and \
                "/cur/" not in path and "/new/" not in path:
            # only messages and the empty maildirfolder marker may be equal on both sides
            assert os.path.basename(path) == "maildirfolder" or digest != files_a[path], path

    # once Dovecot uses B, each side keeps its own Dovecot files: a sync never touches them
    pair.b.flags_add(m1, "\\Flagged")
    pair.b.save("dc-3")
    dovecot_a = {p: d for p, d in pair.a.files().items()
                 if os.path.basename(p).startswith(DOVECOT_FILE_PREFIXES)}
    dovecot_b = {p: d for p, d in pair.b.files().items()
                 if os.path.basename(p).startswith(DOVECOT_FILE_PREFIXES)}
    assert any("dovecot-uidlist" in p for p in dovecot_b)
    pair.sync()
    after_a, after_b = pair.a.files(), pair.b.files()
    assert {p: after_a[p] for p in dovecot_a} == dovecot_a
    assert {p: after_b[p] for p in dovecot_b} == dovecot_b
    assert not [p for p in after_b if "/tmp/" in f"/{p}"], "tmp/ content reached B"
    assert len([p for p in after_a if "half-delivered" in p]) == 2, "A's tmp/ was touched"
    pair.assert_in_sync()


def test_keywords_translate_by_name_not_letter(pair: Pair) -> None:
    # B's first keyword is $Other (letter a there); A's first is $Label1 (letter a here)
    on_b = pair.b.save("kw-b")
    pair.b.flags_add(on_b, "$Other")
    on_a = pair.a.save("kw-a")
    pair.a.flags_add(on_a, "$Label1")
    assert [m.flags for m in pair.a.messages()] == ["a"]
    assert [m.flags for m in pair.b.messages()] == ["a"]

    pair.sync()

    assert pair.b.flags(on_a) == {"$Label1"}
    assert pair.a.flags(on_b) == {"$Other"}
    assert pair.b.flags(on_b) == {"$Other"} and pair.a.flags(on_a) == {"$Label1"}
    kw_a = (pair.a.root / "dovecot-keywords").read_text()
    kw_b = (pair.b.root / "dovecot-keywords").read_text()
    assert kw_a != kw_b  # the letters differ, the names agree

    # a keyword set later on one side travels too, and one removed is removed
    pair.b.flags_add(on_a, "$Label2")
    pair.a.flags_remove(on_a, "$Label1")
    pair.sync()
    assert pair.a.flags(on_a) == {"$Label2"}
    assert pair.b.flags(on_a) == {"$Label2"}
    pair.assert_nothing_planned()


def test_keywords_in_subfolder(pair: Pair) -> None:
    pair.b.create("Work")
    filler = pair.b.save("kw-filler", folder="Work")
    pair.b.flags_add(filler, "Junk", "NonJunk")
    pair.a.create("Work")
    msgid = pair.a.save("kw-sub", folder="Work")
    pair.a.flags_add(msgid, "$Forwarded", "\\Seen")
    pair.sync()
    assert pair.b.flags(msgid) == {"$Forwarded", "\\Seen"}
    assert pair.a.flags(filler) == {"Junk", "NonJunk"}


def test_new_folder_appears_with_maildir_structure(pair: Pair) -> None:
    pair.a.save("folder-seed")
    pair.a.create("Projects/Alpha")
    pair.a.save("folder-1", folder="Projects/Alpha")
    pair.a.create("Empty")
    pair.b.create("FromB")
    pair.b.save("folder-2", folder="FromB")
    run = pair.sync()
    assert run.rc == 0

    for side, folders in ((pair.b, ("Projects/Alpha", "Empty")), (pair.a, ("FromB",))):
        for folder in folders:
            path = side.root / ("." + folder.replace("/", "."))
            for sub in ("cur", "new", "tmp"):
                assert (path / sub).is_dir(), f"{side.name}: {path}/{sub} missing"
            marker = path / "maildirfolder"
            assert marker.is_file() and marker.stat().st_size == 0, f"{side.name}: {marker}"
            assert folder in side.folders(), f"{side.name}: {side.folders()}"
        listed = side.mailboxes()
        assert set(folders) <= listed, f"doveadm on {side.name} lists {listed}"
    pair.assert_in_sync()
    pair.assert_nothing_planned()


def test_new_stays_new_old_unread_stays_cur_and_forwarded_flag_copied(pair: Pair) -> None:
    fresh = pair.a.save("fresh")  # new/, no flags
    old = pair.a.save("old-unread")
    pair.a.create("Old")
    pair.a.flags_add(old, "\\Seen")  # read once ...
    pair.a.move(old, "Old")  # ... moved (Dovecot puts it in cur/) ...
    pair.a.flags_remove(old, "\\Seen")  # ... and marked unread again: cur/X:2,
    fwd = pair.a.save("forwarded")
    pair.a.flags_add(fwd, "\\Seen")
    pair.a.rename_file(fwd, "cur", "PS")  # mutt marks a forwarded message with P
    byid = by_id(pair.a.messages())
    assert (byid[old][0].subdir, byid[old][0].flags) == ("cur", "")

    pair.sync()

    got = by_id(pair.b.messages())
    assert [(m.subdir, m.flags) for m in got[fresh]] == [("new", "")]
    assert [(m.folder, m.subdir, m.flags) for m in got[old]] == [("Old", "cur", "")]
    assert [(m.subdir, m.flags) for m in got[fwd]] == [("cur", "PS")]
    assert pair.b.flags(fresh) == set() and pair.b.flags(old) == set()

    # and back: B forwards the fresh one (P) after reading it; A gets P too
    pair.b.rename_file(fresh, "cur", "PS")
    pair.sync()
    assert [(m.subdir, m.flags) for m in by_id(pair.a.messages())[fresh]] == [("cur", "PS")]
    pair.assert_nothing_planned()


def test_dry_run_changes_nothing(pair: Pair) -> None:
    pair.a.create("Archive")
    ids = [pair.a.save(f"dry-{i}") for i in range(4)]
    pair.b.save("dry-b")
    pair.sync()
    pair.a.flags_add(ids[0], "\\Seen", "$Label1")
    pair.b.move(ids[1], "Archive")
    pair.b.expunge(ids[2])
    pair.a.save("dry-new-a")
    pair.b.create("OnlyB")
    pair.b.save("dry-new-b", folder="OnlyB")
    before = (tree_listing(pair.a.root), tree_listing(pair.b.root),
              pair.state.read_bytes())

    run = pair.sync("--dry-run")

    assert run.json["dry_run"] is True
    assert run.counts and run.json["plan"], run.json
    after = (tree_listing(pair.a.root), tree_listing(pair.b.root), pair.state.read_bytes())
    assert after[0] == before[0], "dry run changed A"
    assert after[1] == before[1], "dry run changed B"
    assert after[2] == before[2], "dry run changed the state database"
    real = pair.sync()
    pair.assert_in_sync()
    assert real.counts, real.json


def test_dry_run_counts_match_the_real_run(pair: Pair) -> None:
    pair.a.save("count-1")
    pair.sync()
    pair.a.create("Projects")
    pair.a.save("count-2", folder="Projects")
    pair.b.create("Travel")
    pair.b.save("count-3", folder="Travel")
    dry = pair.sync("--dry-run")
    real = pair.sync()
    assert dry.counts == real.counts, f"dry run said {dry.counts}, the run did {real.counts}"


def test_dry_run_first_sync_creates_nothing(pair: Pair) -> None:
    pair.a.save("dry-first")
    before = tree_listing(pair.a.root)
    run = pair.sync("--dry-run")
    assert run.counts.get("copy a->b") == 1, run.json
    changed = sorted(set(tree_listing(pair.a.root).items()) ^ set(before.items()))
    problems = [f"A changed: {changed}"] if changed else []
    if pair.b.root.exists():
        problems.append(f"B was created: {sorted(tree_listing(pair.b.root))}")
    assert not problems, "; ".join(problems)


def test_flag_letters_match_doveadm_after_sync(pair: Pair) -> None:
    """What Dovecot reports on each side agrees with the file name letters Python reads."""
    msgid = pair.a.save("letters")
    pair.a.flags_add(msgid, "\\Seen", "\\Answered", "\\Draft")
    pair.sync()
    for side in (pair.a, pair.b):
        (msg,) = side.messages()
        assert msg.flags == letters(side.flags(msgid)) == "DRS"


def test_untranslatable_keyword_is_left_alone_and_reported(pair: Pair, scratch: Path,
                                                           user: User, doveadm: str) -> None:
    """Replica C keeps dovecot-keywords outside the maildir (CONTROL=, as anchors.md runs
    Dovecot), so the letters in its file names have no name inside the tree. Sync must leave
    such a letter alone, never let it mean another keyword on either side, and report it."""
    c = Replica("C", scratch, user, doveadm, control_elsewhere=True)
    pair.a = c
    on_b = pair.b.save("kw-b")
    pair.b.flags_add(on_b, "$Other")  # letter a on B
    msgid = c.save("kw-hidden")
    c.flags_add(msgid, "$Label1", "\\Seen")  # letter a on C, named only in C's control dir
    assert not (c.root / "dovecot-keywords").exists()

    run = pair.sync(expect_rc=None)

    problems = []
    if "$Other" in pair.b.flags(msgid):
        problems.append("C's letter became B's keyword $Other")
    if "\\Seen" not in pair.b.flags(msgid):
        problems.append("\\Seen of C's message not copied")
    if c.flags(msgid) != {"$Label1", "\\Seen"}:
        problems.append(f"C's own message changed: {set(c.flags(msgid))}")
    if c.flags(on_b) - {"$Other"}:
        problems.append(f"B's $Other message shows {set(c.flags(on_b))} in Dovecot on C: sync "
                        "gave it a letter C's messages already use for another keyword")
    report = " ".join(run.json["skipped"] + run.json["notices"])
    if "keyword" not in report and "letter" not in report:
        problems.append(f"untranslatable letter not reported: {run.json}")
    assert not problems, problems
