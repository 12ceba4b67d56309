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

    By then every file is closed and the state store committed and closed; what is left is
    freeing each object one by one, which cost a kept 250-change sync about 50 ms of its
    0.6 s (timed by hand). atexit functions still run; while another thread runs, or when
    the output cannot be flushed, the exit is the ordinary one.
    """
    if threading.active_count() > 1:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status)
