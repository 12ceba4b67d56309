"""The `mailmirror` command line: the one place where errors become messages and exit codes.

Thin on purpose: it parses arguments, opens replicas and the store, calls the engine and hands
the report to report.py. Heavy modules are imported inside commands so `--help` stays fast.

Exit codes: 0 in sync; 1 finished but some items were skipped (retried next run); 2 usage or
configuration error; 3 fatal (a replica or the state store cannot be reached, read or locked).
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mailmirror.errors import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PARTIAL,
    LockedError,
    MailmirrorError,
    ReplicaError,
    SafetyStop,
    UsageError,
    printable,
)

if TYPE_CHECKING:
    from mailmirror.jobs import Job, Settings
    from mailmirror.sync.engine import SyncReport
    from mailmirror.sync.guard import Safety
    from mailmirror.transport.options import SshOptions

MAX_WATCH_PAUSE = 86400  # seconds: --interval and --poll, a day at most
MAX_LOCK_WAIT = 86400  # seconds: --lock-timeout

app = typer.Typer(
    help="Two-way, message-aware Maildir sync.\n\n"
    "Example: mailmirror sync ~/Maildir /srv/backup/Maildir\n\n"
    "Exit codes: 0 in sync, 1 some items skipped, 2 usage/config error, 3 fatal.",
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(asked: bool) -> None:
    if asked:
        from mailmirror import __version__

        print(f"mailmirror {__version__}")
        raise typer.Exit(0)


@app.callback()
def _group(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version (both sides of a remote sync need the same one).")] = False
           ) -> None:
    """Two-way, message-aware Maildir sync."""

# Path options are readable=False: what is wrong with a file is said by the code that opens
# it, in the one-line form of every other error
StateOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045 (typer needs Optional)
    "--state", readable=False,
    help="State database (default: $MAILMIRROR_STATE or the XDG state dir).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--config", readable=False,
    help="Config file (default: $MAILMIRROR_CONFIG or the XDG config dir).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]

# shared by sync and watch
FirstArg = Annotated[str, typer.Argument(help="First maildir, or a profile name from the config.")]
SecondArg = Annotated[Optional[str], typer.Argument(help="Second maildir.")]  # noqa: UP045
PreferOpt = Annotated[str, typer.Option(
    "--prefer", help="Side that wins when both moved a message differently: a or b.")]
AllowEmptyOpt = Annotated[bool, typer.Option(
    "--allow-empty", help="Sync even if one side suddenly holds no mail at all.")]
LayoutOpt = Annotated[str, typer.Option(help="Folder layout: maildir++ or fs.")]
SeparatorOpt = Annotated[str, typer.Option(help="Info separator in file names: ':' ';' '!'.")]
SshConfigOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    readable=False, help="ssh_config file (default ~/.ssh/config).")]
IdentityOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    readable=False, help="Private key for SSH (default: ssh-agent and ~/.ssh/id_*).")]
KnownHostsOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    readable=False, help="known_hosts file (default ~/.ssh/known_hosts).")]
RemoteCommandOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    help="How to start the agent on the remote; the maildir path is appended, quoted "
    "(default: the profile's remote_command, else 'mailmirror agent').")]
RemoteOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--remote", help="With a profile: use this remote (host or address) only.")]


def _fail(exc: BaseException, debug: bool) -> None:
    code = exc.exit_code if isinstance(exc, MailmirrorError) else EXIT_FATAL
    if debug:  # the traceback, and the exit code the message would have had
        import traceback

        traceback.print_exception(exc)
        raise typer.Exit(code)
    message = str(exc) if isinstance(exc, MailmirrorError) else f"internal error: {exc!r}"
    print(f"mailmirror: {printable(message)}", file=sys.stderr)
    raise typer.Exit(code)


def _user_error(exc: BaseException) -> BaseException:
    """The one-line form of database and OS errors (MailmirrorErrors are one line already)."""
    if isinstance(exc, sqlite3.Error):
        from mailmirror.store import store_error

        return store_error(exc)
    if isinstance(exc, PermissionError) and exc.filename:
        return MailmirrorError(f"{exc.filename}: permission denied: run as the user that owns "
                               "it (see docs/servers.md), or fix its permissions")
    if isinstance(exc, OSError):
        return MailmirrorError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    return exc


@app.command()
def sync(
    a: FirstArg,
    b: SecondArg = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")]
    = False,
    prefer: PreferOpt = "a",
    full: Annotated[bool, typer.Option(
        "--full", help="List every folder even if its directory times are unchanged.")] = False,
    allow_empty: AllowEmptyOpt = False,
    allow_mass_delete: Annotated[bool, typer.Option(
        "--allow-mass-delete", help="Sync even if it deletes more than --max-delete.")] = False,
    max_delete: Annotated[Optional[float], typer.Option(  # noqa: UP045
        "--max-delete", help="Stop when a run would delete more than this percentage of a "
        "side (default 50, or the profile's max_delete).")] = None,
    accept_new_replica: Annotated[bool, typer.Option(
        "--accept-new-replica", help="Sync although a known path or address now has no "
        "mailmirror-id, or another replica that shares no mail.")] = False,
    quarantine_days: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--quarantine-days", help="Days deleted mail is kept (default 30).")] = None,
    layout: LayoutOpt = "maildir++",
    separator: SeparatorOpt = ":",
    lock_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for another sync of the same pair.")] = 60.0,
    ssh_config: SshConfigOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    remote_command: RemoteCommandOpt = None,
    remote: RemoteOpt = None,
    sftp: Annotated[bool, typer.Option(
        "--sftp", help="Reach remotes over SFTP even if mailmirror is installed there.")]
    = False,
    keep_connection: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--keep-connection", metavar="SECONDS|auto",
        help="Keep each SSH connection open this long after the run, for the next sync to "
        "reuse (much faster start); 0 closes it. Default auto (or the profile's "
        "keep_connection): 16 minutes, only for a pair also synced in the 16 minutes before.")]
    = None,
    state: StateOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Synchronise two maildirs both ways (either is created if it does not exist).

    \b
    Examples:
      mailmirror sync ~/Maildir /srv/copy/Maildir
      mailmirror sync --dry-run ~/Maildir /srv/copy/Maildir
      mailmirror sync ~/Maildir backup.example.org:Maildir
      mailmirror sync ~/Maildir ssh://mail@main.example.org:2222/srv/mail/alice
      mailmirror sync laptop            (a [profile.laptop] in the config)

    \b
    Exit codes: 0 in sync, 1 some items skipped (retried next run), 2 usage/config error,
    3 fatal (replica or state unusable, or locked).
    """
    try:
        from mailmirror.sync.guard import Safety
        from mailmirror.transport.options import SshOptions

        ssh = SshOptions(ssh_config, identity, known_hosts, remote_command, sftp=sftp)
        safety = Safety(allow_mass_delete, max_delete, accept_new_replica, quarantine_days)
        code = _sync(a, b, dry_run, prefer, full, allow_empty, layout, separator, lock_timeout,
                     state, config, json_out, ssh, remote, safety, keep_connection)
    except (MailmirrorError, OSError, sqlite3.Error) as exc:
        _fail(_user_error(exc), debug)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _sync(a: str, b: str | None, dry_run: bool, prefer: str, full: bool, allow_empty: bool,
          layout: str, separator: str, lock_timeout: float, state: Path | None,
          config: Path | None, json_out: bool, ssh: SshOptions, remote: str | None,
          safety: Safety, keep_connection: str | None) -> int:
    from mailmirror.jobs import Runner
    from mailmirror.report import Reporter
    from mailmirror.sync.engine import SyncReport

    jobs, settings = _prepare(a, b, dry_run, prefer, full, allow_empty, layout, separator,
                              lock_timeout, state, config, ssh, remote, safety, keep_connection)
    reporter = Reporter(json_out=json_out, tty=sys.stderr.isatty())
    reports: list[SyncReport | MailmirrorError] = []
    with reporter.progress() as progress, Runner(settings, reporter.notice, progress) as runner:
        for job in jobs:
            try:
                reports.append(runner.run(job))
            except (ReplicaError, LockedError, SafetyStop, UsageError) as exc:
                # one user's broken maildir must not leave the profile's other users unsynced
                if len(jobs) == 1:
                    raise
                reporter.notice(f"{exc} (the profile's other pairs go on)")
                reports.append(exc)
    reporter.finish(reports)
    failed = [r.exit_code for r in reports if isinstance(r, MailmirrorError)]
    if failed:
        return max(failed)
    return EXIT_PARTIAL if any(r.skipped for r in reports if isinstance(r, SyncReport)) \
        else EXIT_OK


def _prepare(a: str, b: str | None, dry_run: bool, prefer: str, full: bool, allow_empty: bool,
             layout: str, separator: str, lock_timeout: float, state: Path | None,
             config: Path | None, ssh: SshOptions, remote: str | None,
             safety: Safety | None = None, keep_connection: str | float | None = None
             ) -> tuple[list[Job], Settings]:
    """The jobs and settings of a sync or watch: two maildirs, or a profile of the config."""
    from dataclasses import replace

    from mailmirror import paths
    from mailmirror.jobs import Job, Settings
    from mailmirror.sync.engine import SyncOptions
    from mailmirror.sync.guard import Safety
    from mailmirror.sync.model import Side
    from mailmirror.transport.options import KEEP_AUTO, MAX_KEEP_SECONDS, parse_keep

    timeout = None
    keep = parse_keep(keep_connection) if keep_connection is not None else None
    if keep_connection is not None and keep is None:
        raise UsageError(f"--keep-connection must be {KEEP_AUTO} or 0 to {MAX_KEEP_SECONDS} "
                         f"seconds, not {keep_connection}")
    safety_options = (safety or Safety()).options()
    if b is None:
        from mailmirror.config import load_profile

        profile = load_profile(config or paths.default_config_path(), a)
        safety_options = (safety or Safety()).options(profile.max_delete,
                                                      profile.quarantine_days)
        explicit = ssh.remote_command is not None  # --remote-command beats the profile
        jobs = [Job(pa, candidates, None if explicit else command)
                for pa, candidates, command in profile.pairs]
        layout, separator, prefer = profile.layout, profile.separator, profile.prefer
        timeout = profile.timeout
        if keep is None:
            keep = profile.keep_connection
        from_profile = {"config": profile.ssh_config, "identity": profile.identity,
                        "known_hosts": profile.known_hosts}
        ssh = replace(ssh, **{k: Path(v).expanduser() for k, v in from_profile.items()
                              if v and getattr(ssh, k) is None})  # the command line wins
    else:
        if remote is not None:
            raise UsageError("--remote picks one of a profile's remotes: give a profile name")
        jobs = [Job(a, (b,))]
    if not 0 <= lock_timeout <= MAX_LOCK_WAIT:
        raise UsageError(f"--lock-timeout must be 0 to {MAX_LOCK_WAIT} seconds, not "
                         f"{lock_timeout:g}")
    if prefer not in ("a", "b"):
        raise UsageError(f"--prefer must be a or b, not {prefer!r}")
    _check_naming(layout, separator)
    options = SyncOptions(prefer=Side(prefer), dry_run=dry_run, full=full,
                          allow_empty=allow_empty, **safety_options)  # type: ignore[arg-type]
    # expanded once: the store and the pair lock beside it must be found at one place ('~'
    # reaches us unexpanded from systemd units and quoted crontab lines)
    state_path = (state or paths.default_state_path()).expanduser().absolute()
    return jobs, Settings(state_path, options, ssh, layout, separator, lock_timeout, timeout,
                          remote, KEEP_AUTO if keep is None else keep)


def _check_naming(layout: str, separator: str) -> None:
    from mailmirror.maildir.folders import LAYOUTS
    from mailmirror.maildir.names import SEPARATORS

    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if separator not in SEPARATORS:
        raise UsageError(f"--separator must be one of {' '.join(SEPARATORS)}")


@app.command()
def watch(
    a: FirstArg,
    b: SecondArg = None,
    interval: Annotated[float, typer.Option(
        help="Seconds between backstop syncs of everything (missed events, a preferred "
        "remote back).")] = 600.0,
    poll: Annotated[float, typer.Option(
        help="Seconds between polls where file events are unavailable (SFTP remotes).")]
    = 5.0,
    prefer: PreferOpt = "a",
    allow_empty: AllowEmptyOpt = False,
    layout: LayoutOpt = "maildir++",
    separator: SeparatorOpt = ":",
    lock_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for a cron sync of the same pair before retrying later.")]
    = 5.0,
    ssh_config: SshConfigOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    remote_command: RemoteCommandOpt = None,
    remote: RemoteOpt = None,
    sftp: Annotated[bool, typer.Option(
        "--sftp", help="Reach remotes over SFTP (polled) even if mailmirror is installed.")]
    = False,
    state: StateOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Keep two maildirs in sync live, both ways, until stopped (SIGINT/SIGTERM: exit 0).

    Syncs everything at start, then within about a second of any change on either side
    (file events here, the agent's events on a remote), and everything every --interval
    seconds. A lost remote is retried with backoff, trying a profile's remotes in order.
    Logs one line per state change to stderr, with timestamps when not on a terminal.

    \b
    Examples:
      mailmirror watch ~/Maildir backup.example.org:Maildir
      mailmirror watch laptop            (a [profile.laptop] in the config)

    \b
    Exit codes: 0 stopped by a signal, 2 usage/config error, 3 fatal (state store).
    """
    try:
        from mailmirror.transport.options import SshOptions

        for name, seconds in (("--interval", interval), ("--poll", poll)):
            # 0 would sync (or poll) without pause, for ever; inf cannot be waited for
            if not 0 < seconds <= MAX_WATCH_PAUSE:
                raise UsageError(f"{name} must be more than 0 seconds and at most "
                                 f"{MAX_WATCH_PAUSE}, not {seconds:g}")
        ssh = SshOptions(ssh_config, identity, known_hosts, remote_command, sftp=sftp)
        # live mode holds its own connections for as long as it runs: no keepers
        jobs, settings = _prepare(a, b, False, prefer, False, allow_empty, layout, separator,
                                  lock_timeout, state, config, ssh, remote, keep_connection=0.0)
        from mailmirror.watch.run import watch_forever

        code = watch_forever(jobs, settings, interval, poll, tty=sys.stderr.isatty())
    except (MailmirrorError, OSError, sqlite3.Error) as exc:
        _fail(_user_error(exc), debug)
    raise typer.Exit(code)


@app.command()
def status(
    state: StateOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show every known replica pair: last run, outcome and counts.

    Example: mailmirror status --json
    """
    from mailmirror import paths
    from mailmirror.store import open_store
    from mailmirror.sync.state import SyncState

    try:
        with open_store(state or paths.default_state_path(), readonly=True,
                        create=False) as store:
            runs = SyncState(store).runs()
    except (MailmirrorError, OSError, sqlite3.Error) as exc:
        _fail(_user_error(exc), debug)
    if json_out:
        print(json.dumps({"pairs": runs}, indent=2))
        return
    from mailmirror.report import print_status

    print_status(runs)


@app.command(hidden=False)
def agent(
    root: Annotated[str, typer.Argument(help="The maildir this agent serves.")],
    allow_root: Annotated[bool, typer.Option(
        "--allow-root", help="Started by sudo, serve a maildir that root owns (as root).")] = False,
) -> None:
    """Serve ROOT to a remote mailmirror over stdin/stdout (started by `sync` over SSH).

    Not for interactive use: it speaks the binary protocol of docs/protocol.md. Started as
    root (sudo), it becomes the owner of ROOT before touching any file (docs/remote.md).

    \b
    Example (what the client runs on the remote, over an SSH exec channel):
      mailmirror agent /home/alice/Maildir
    """
    from mailmirror.transport.agent import main as agent_main

    raise typer.Exit(agent_main(root, allow_root))


config_app = typer.Typer(
    help="Check the config file.\n\nExample: mailmirror config check",
    no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """List every problem of the config file (sync profiles and [failover]), each with its line.

    Example: mailmirror config check --config ~/.config/mailmirror/config.toml

    Exit codes: 0 clean, 2 problems found (or the file cannot be read).
    """
    from mailmirror import paths
    from mailmirror.configcheck import check_file
    from mailmirror.errors import EXIT_USAGE

    path = config or paths.default_config_path()
    try:
        problems = check_file(path)
    except MailmirrorError as exc:
        _fail(exc, debug)
    for problem in problems:
        print(f"{path}:{problem.line}: {problem.message}")
    if problems:
        print(f"mailmirror: {len(problems)} problem(s) in {path}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE)
    print(f"{path}: ok")


@app.command()
def init(
    role: Annotated[str, typer.Option(
        "--role", help="server (main), backup or desktop (laptops too).")],
    output: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--output", help="File to write (default: $MAILMIRROR_CONFIG or the XDG config dir).")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a commented starter config for one role of the classic setup.

    \b
    Examples:
      mailmirror init --role desktop
      mailmirror init --role backup --output /etc/mailmirror/config.toml
    """
    from mailmirror import paths
    from mailmirror.starter import write_starter

    path = output or paths.default_config_path()
    try:
        write_starter(role, path, force)
    except (MailmirrorError, OSError) as exc:
        if isinstance(exc, OSError):
            exc = MailmirrorError(f"cannot write {exc.filename or path}: {exc.strerror or exc}")
        _fail(exc, debug)
    print(f"wrote {path}: edit it, then run `mailmirror config check --config "
          f"{shlex.quote(str(path))}`")


quarantine_app = typer.Typer(
    help="List and restore messages a sync deleted (kept for quarantine_days, default 30).\n\n"
    "Example: mailmirror quarantine list ~/Maildir",
    no_args_is_help=True, rich_markup_mode=None)
app.add_typer(quarantine_app, name="quarantine")
MaildirArg = Annotated[Path, typer.Argument(help="The local maildir root.")]


@quarantine_app.command("list")
def quarantine_list(maildir: MaildirArg, layout: LayoutOpt = "maildir++",
                    separator: SeparatorOpt = ":", json_out: JsonOpt = False,
                    debug: DebugOpt = False) -> None:
    """List the messages in MAILDIR's quarantine: day deleted, folder, key, From, Subject.

    Example: mailmirror quarantine list ~/Maildir --json
    """
    from mailmirror.maildir import quarantine

    try:
        root = _quarantined(maildir, layout, separator)
        items = [quarantine.describe(i, separator) for i in quarantine.entries(root, layout)]
    except (MailmirrorError, OSError) as exc:
        _fail(_user_error(exc), debug)
    if json_out:
        print(json.dumps({"maildir": str(root), "messages": items}, indent=2))
        return
    for line in quarantine.listing_lines(items):
        print(line)


@quarantine_app.command("restore")
def quarantine_restore(maildir: MaildirArg,
                       keys: Annotated[list[str], typer.Argument(help="Keys from `list`.")],
                       layout: LayoutOpt = "maildir++", separator: SeparatorOpt = ":",
                       debug: DebugOpt = False) -> None:
    """Put quarantined messages back into their folders; the next sync copies them over.

    Each comes back under a fresh name, so no sync takes it for the message it deleted.

    \b
    Example: mailmirror quarantine restore ~/Maildir 1700000000.M1P1.mail
    Exit codes: 0 restored, 2 a key is unknown or still in the maildir (nothing restored).
    """
    from mailmirror.maildir import quarantine

    try:
        root = _quarantined(maildir, layout, separator)
        for folder, relname in quarantine.restore_keys(root, layout, separator, keys):
            print(f"restored {folder}/{relname}")
    except (MailmirrorError, OSError) as exc:
        _fail(_user_error(exc), debug)


def _quarantined(maildir: Path, layout: str, separator: str) -> Path:
    """The root of an existing maildir, for the quarantine commands (which never create one)."""
    from mailmirror.replica.local import check_local

    _check_naming(layout, separator)
    if not maildir.expanduser().is_dir():
        raise UsageError(f"{maildir} is not a maildir here: give the path a sync keeps")
    return check_local(maildir, layout)


def main() -> None:
    """Run the command line, building only the command asked for when it is a plain one.

    typer reads the signature of every command it builds: about 10 ms of each cron run for
    commands that will not run. A group callback keeps `mailmirror sync ...` a subcommand.
    """
    asked = sys.argv[1] if len(sys.argv) > 1 else ""
    chosen = [c for c in app.registered_commands
              if c.callback is not None and (c.name or c.callback.__name__) == asked]
    if not chosen:
        app()
        return
    one = typer.Typer(add_completion=False, rich_markup_mode=None,
                      pretty_exceptions_enable=False)
    one.callback()(_one_command)
    one.registered_commands = chosen
    one()


def _one_command() -> None:
    """The group of a single command (see main)."""
