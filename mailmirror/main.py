"""The console entry point: a fast path for the agent, typer for everything else.

The agent is started once per remote sync, so `mailmirror agent ROOT` skips importing typer
(about 0.1 s); every other command, and `agent --help`, goes through mailmirror.cli.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def main() -> NoReturn:
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
    This does the first two, flushes the output and ends the process; when the output cannot
    be flushed, the exit is the ordinary one.
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
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status)
