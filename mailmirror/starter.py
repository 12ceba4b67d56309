"""`mailmirror init`: commented starter configs, one per role of the classic setup.

The texts are the documentation's examples too (docs/examples/init/ROLE.toml holds each one
verbatim, a test keeps them equal), and each passes `mailmirror config check` as written.
Writing refuses to replace an existing file unless forced; nothing else is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailmirror.errors import MailmirrorError, UsageError

_HEAD = """\
# mailmirror config for the {title} (written by `mailmirror init --role {role}`).
# Replace the example names and addresses, then run `mailmirror config check`.
# The guide: docs/README.md. Every key: docs/configuration.md.
"""

SERVER = _HEAD.format(title="MAIN server", role="server") + """
# The main server keeps every mailbox identical with the backup server, both ways:
#   mailmirror sync servers          (from cron every few minutes: docs/servers.md)
# mailmirror writes files as the user it runs as and never changes their owner, so run it
# as the owner of the local maildirs (one user per mailbox: one profile and crontab each;
# virtual mailboxes owned by one account such as vmail: list them all in `users`).
# On the backup, the `mirror` user may only start the agent as these users: docs/remote.md.

[profile.servers]
users = ["alice"]                                  # each mailbox; {user} below becomes each name
local = "/home/{user}/Maildir"                     # the mailbox on this server
remotes = ["mirror@backup.example.org:/home/{user}/Maildir"]      # the same mailbox on the backup
remote_command = "sudo -n -u {user} /usr/local/bin/mailmirror agent"
timeout = 10                                       # seconds to wait for the backup to answer
# identity = "~/.ssh/mirror_ed25519"               # the key the backup's mirror user accepts
# layout = "maildir++"                             # or "fs" for Name/Sub/ folders
# separator = ":"                                  # ";" or "!" on filesystems without ":"
# prefer = "a"                                     # who wins when both moved a message differently
"""

BACKUP = _HEAD.format(title="BACKUP server", role="backup") + """
# The backup holds the primary DNS (NSD) and runs `failover`, which points the names at the
# main server while it answers and at this one when it does not (docs/failover.md):
#   failover run                     (from cron every 2 minutes)
# Mail: the main server pushes every mailbox here (its `servers` profile), so no profile is
# needed on this side; the locked-down `mirror` user is set up as in docs/remote.md.

[failover]
main_ip = "192.0.2.10"                 # what @IP@ becomes while main is healthy
backup_ip = "198.51.100.20"            # ... and while it is not (this server)
# main_ip6 = "2001:db8::10"            # what @IP6@ becomes (set both or neither)
# backup_ip6 = "2001:db8:1::20"
templates = "/etc/mailmirror/zones"    # zone templates with @IP@ and @serial number@ markers
zones_dir = "/var/lib/nsd/zones"       # NSD's zonesdir: rendered zones go here
reload = ["nsd-control", "reload", "{zone}"]   # run once per changed zone; [] = none
# verify = ["127.0.0.1:53", "192.0.2.10:53"]   # servers asked for the new serial afterwards
fail_after = 2                         # failed checks in a row before DNS moves to the backup
recover_after = 1                      # good checks in a row before it moves back to main

[[failover.check]]
type = "http"                          # http | tcp | smtp | imap
url = "http://main.example.org/"       # main's page: answering = main is up
timeout = 10
# expect = "some text on that page"
"""

DESKTOP = _HEAD.format(title="DESKTOP or LAPTOP", role="desktop") + """
# Keep a local copy of your mailbox in sync with the servers, both ways:
#   mailmirror sync mail             (from cron, or by hand before reading mail)
# The first server in `remotes` that answers is used: main, or the backup while main is down.
# Read ~/Maildir with mutt or neomutt (docs/desktop.md).

[profile.mail]
local = "~/Maildir"
remotes = ["alice@main.example.org:Maildir", "alice@backup.example.org:Maildir"]
timeout = 10                           # seconds to wait for a server before trying the next
# remote_command = "/opt/mailmirror/bin/mailmirror agent"   # if not on the server's PATH
# identity = "~/.ssh/id_ed25519"
"""

STARTERS = {"server": SERVER, "backup": BACKUP, "desktop": DESKTOP}


def write_starter(role: str, path: Path, force: bool) -> None:
    """Write the starter config of `role` to `path` (its folder is created if missing).

    Raises UsageError for an unknown role, or when `path` exists and `force` is false.
    """
    if role not in STARTERS:
        raise UsageError(f"--role must be one of {', '.join(STARTERS)}, not {role!r}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory: give --output the config file's name")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists: edit it, choose another file with "
                         "--output FILE, or replace it with --force")
    target = Path(os.path.realpath(path))  # a symbolic link (dotfiles) keeps pointing at it
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.init-tmp")
    try:
        tmp.write_text(STARTERS[role], encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MailmirrorError(f"cannot write {path}: {exc.strerror or exc}") from None
