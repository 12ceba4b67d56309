"""The console entry point: a fast path for the agent, typer for everything else.

The agent is started once per remote sync, so `mailmirror agent ROOT` skips importing typer
(about 0.1 s); every other command, and `agent --help`, goes through mailmirror.cli.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn, TextIO


def main() -> NoReturn:
    _guard_output()
    try:
        if len(sys.argv) == 3 and sys.argv[1] == "agent" and not sys.argv[2].startswith("-"):
            from mailmirror.transport.agent import main as agent_main

            code: object = agent_main(sys.argv[2])
        else:
            from mailmirror.cli import main as cli_main

            cli_main()
            code = 0
    except SystemExit as exc:
        code = exc.code
    leave(code)


def leave(code: object) -> NoReturn:
    """Exit as sys.exit(code) would, without tearing the interpreter down.

    An ordinary exit waits for the threads that are not daemons (and the idle workers of
    thread pools), runs the atexit functions, then frees every object one by one: that last
    part cost a kept 250-change sync about 50 ms of its 0.6 s (timed by hand), and nothing
    is left for it to do, as every file is closed and the state store committed by then.
    This does the first two, flushes the output (what happens when it cannot be written:
    see _Output) and ends the process.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # what an ordinary exit does first: join the threads
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except SystemExit as lost:  # see _Output
        status = max(status, int(lost.code or 0))
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(status)


def _guard_output() -> None:
    """Make stdout and stderr safe to write whatever they are: closed (`>&-`: Python then
    has None, and a print would go elsewhere or fail), or a pipe whose reader left (`| head`:
    the rest of the output is dropped, the run goes on and keeps its exit status)."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (for the process's life)
    sys.stdout = _Output(sys.stdout)  # type: ignore[assignment]


class _Output:
    """stdout, but a reader that went away (EPIPE) sends the rest to /dev/null, and any
    other write error (a full disk) is one line on stderr and exit status 3 (the output
    asked for is lost; the work, done before the output is printed, stands)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._lost(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)
        if not isinstance(exc, BrokenPipeError):
            print(f"mailmirror: cannot write the output: {exc.strerror or exc}",
                  file=sys.stderr)
            raise SystemExit(3)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
