"""The `failover` command line: the only place that prints, exits, or shows a traceback.

Thin: each command loads the config, opens the state store and calls the engine. Heavy
libraries (dnspython, httpx) are imported inside commands so `failover --help` stays fast.
Quiet when stdout is not a terminal (cron): only IP changes and errors are printed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailmirror.errors import EXIT_FATAL, EXIT_PARTIAL, MailmirrorError
from mailmirror.paths import default_config_path, default_state_path

if TYPE_CHECKING:
    from failover.config import Config
    from failover.engine import Report
    from failover.state import State

app = typer.Typer(add_completion=True, no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


class Server(StrEnum):
    backup = "backup"
    main = "main"


class Stdout:
    """stdout for one command. A write that fails (a full disk, a reader that went away) is
    said once on stderr and remembered, not raised: by the time a command prints, its work is
    done, so it still finishes (its problems on stderr included) and exits 1, never 3, whose
    "nothing written" would be false. A closed pipe (`| head`) ends the output quietly."""

    def __init__(self) -> None:
        self.lost = False

    def echo(self, text: str) -> None:
        if self.lost:
            return
        try:
            typer.echo(text)
        except OSError as exc:
            self.lost = True
            _discard_stdout()
            if not isinstance(exc, BrokenPipeError):
                _say(f"failover: cannot write to stdout ({exc.strerror or exc}): the command ran "
                     "to the end, but its output is lost; check where stdout goes")


@dataclass(frozen=True)
class Options:
    config: Path
    state: Path
    debug: bool
    stdout: Stdout = field(default_factory=Stdout)


def _version(asked: bool) -> None:
    if asked:
        from mailmirror import __version__

        print(f"failover (mailmirror {__version__})")
        raise typer.Exit(0)


@app.callback()
def options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="TOML config (default: $MAILMIRROR_CONFIG or XDG)."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="State database (default: $MAILMIRROR_STATE or XDG)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Point DNS at whichever server is up: health checks, zone rewriting, NSD reload, verify.

    Example: failover --config /etc/mailmirror/config.toml run
    """
    ctx.obj = Options(config or default_config_path(), state or default_state_path(), debug)


@app.command()
def zones(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Bump every zone, changed or not.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rewrite zones whose IP or template changed, then reload, notify and verify them.

    Example: failover zones --force   (after editing templates by hand)
    """
    with _session(ctx) as (config, state):
        from failover import engine

        report = engine.rewrite_zones(config, state, force)
        _emit(ctx.obj.stdout, config, report, as_json)
        _exit_for(report)


@app.command()
def run(
    ctx: typer.Context,
    as_json: JsonFlag = False,
) -> None:
    """Check main, decide, rewrite, reload and verify: what cron calls every few minutes.

    Example: */2 * * * * failover run
    """
    with _session(ctx) as (config, state):
        from failover import engine

        report = engine.run_cycle(config, state)
        _emit(ctx.obj.stdout, config, report, as_json)
        _exit_for(report)


@app.command()
def check(
    ctx: typer.Context,
    as_json: JsonFlag = False,
) -> None:
    """Run the health checks and print the result; change nothing. Exit 1 when main is down.

    Example: failover check --json
    """
    with _session(ctx, need_state=False) as (config, _):
        from failover import output
        from failover.checks import run_checks

        healthy, results = run_checks(config.checks, config.combine)
        if as_json:
            _print_json(ctx.obj.stdout, output.check_json(healthy, results))
        else:
            ctx.obj.stdout.echo("\n".join(output.check_lines(healthy, results)))
        if not healthy:
            raise typer.Exit(EXIT_PARTIAL)


@app.command()
def watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between cycles.")] = 30.0,
) -> None:
    """Run the `run` cycle forever, so failover takes seconds instead of a cron period.

    Stops cleanly on SIGTERM or Ctrl-C. Example: failover watch --interval 15
    """
    with _session(ctx) as (config, state):
        from failover import engine

        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())

        def on_error(exc: Exception) -> None:
            _error(_message(_user_error(exc, ctx.obj.state)), ctx.obj.debug, exc)

        def on_report(report: Report) -> None:
            _emit(ctx.obj.stdout, config, report, False)

        engine.watch(config, state, interval, stop, on_report, on_error)


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    history: Annotated[int, typer.Option(min=0, help="How many past events to show.")] = 10,
) -> None:
    """Show per zone the serial, IP and last change, the health and the last verification.

    Example: failover status --json | jq '.zones[] | {zone, serial, ip}'
    """
    with _session(ctx, need_config=False, read_only=True) as (_, state):
        from failover import output

        shown = output.status_json(state, history)
        if as_json:
            _print_json(ctx.obj.stdout, shown)
        else:
            ctx.obj.stdout.echo("\n".join(output.status_lines(shown)))


@app.command("hold")
def hold_command(
    ctx: typer.Context,
    server: Annotated[Server, typer.Argument(help="Where DNS points until `failover release`.")],
) -> None:
    """Pin DNS to one server for maintenance, whatever the checks say; applied at once.

    Example: failover hold backup   (then work on main; `failover release` when done)
    """
    with _session(ctx) as (config, state):
        from failover import engine

        report = engine.hold(config, state, server.value)
        out = ctx.obj.stdout
        out.echo(f"held on {server.value}; run `failover release` to hand back to the checks")
        _emit(out, config, report, False)
        _exit_for(report)


@app.command()
def release(ctx: typer.Context) -> None:
    """End a hold: the next `failover run` (or watch cycle) decides from the checks again.

    Example: failover release
    """
    with _session(ctx, need_config=False, existing_state=True) as (_, state):
        from failover import engine

        health, held = engine.release(state)
        if held is None:
            ctx.obj.stdout.echo(
                f"nothing was held; DNS points at {health.active} as the checks decide")
        else:
            ctx.obj.stdout.echo(
                f"released; DNS points at {health.active} until the next check decides")


def main() -> None:
    """Console-script entry point."""
    app()


@contextmanager
def _session(
    ctx: typer.Context, need_config: bool = True, need_state: bool = True, read_only: bool = False,
    existing_state: bool = False,
) -> Iterator[tuple[Config, State]]:
    """Load what a command needs and turn user-facing errors into one line and an exit code;
    a command whose output could not be written exits 1 at least (see Stdout)."""
    opts: Options = ctx.obj
    state = None
    code = 0
    try:
        from failover.config import load
        from failover.state import open_state

        config = load(opts.config) if need_config else None
        state = open_state(opts.state, read_only, existing_state) if need_state else None
        yield config, state  # type: ignore[misc]
    except typer.Exit as done:
        code = done.exit_code
    except typer.Abort:
        raise
    except Exception as exc:
        shown = _user_error(exc, opts.state)
        _error(_message(shown), opts.debug, exc)
        code = shown.exit_code if isinstance(shown, MailmirrorError) else EXIT_FATAL
    finally:
        if state is not None:
            state.close()
    if opts.stdout.lost:
        code = max(code, EXIT_PARTIAL)
    if code:
        raise typer.Exit(code)


def _user_error(exc: Exception, state_path: Path) -> Exception:
    """The one-line form of an SQLite error on the state database (mailmirror's wording and
    exit code); other exceptions as they are."""
    import sqlite3

    if isinstance(exc, sqlite3.Error):
        from mailmirror.store import store_error

        return store_error(exc, state_path.expanduser())
    return exc


def _message(exc: Exception) -> str:
    if isinstance(exc, MailmirrorError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _error(message: str, debug: bool, exc: BaseException | None = None) -> None:
    if debug and exc is not None:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    _say(f"failover: {message}")


def _say(line: str) -> None:
    """One line on stderr; when even stderr cannot be written there is no one left to tell."""
    with suppress(OSError):
        typer.echo(line, err=True)


def _discard_stdout() -> None:
    """Point stdout at /dev/null after a failed write: the text still buffered is then dropped
    at exit, where flushing it again would fail (Python: "Exception ignored", exit 120)."""
    with suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _emit(out: Stdout, config: Config, report: Report, as_json: bool) -> None:
    from failover import output

    if as_json:
        _print_json(out, output.report_json(report))
    elif sys.stdout.isatty():
        out.echo("\n".join(output.report_lines(config, report)))
    else:
        for line in output.switch_lines(config, report):
            out.echo(line)
    for problem in report.problems():
        _say(f"failover: {problem}")


def _exit_for(report: Report) -> None:
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _print_json(out: Stdout, value: dict[str, Any]) -> None:
    out.echo(json.dumps(value, indent=2))
