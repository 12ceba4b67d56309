"""The console entry point: a fast path for the agent, typer for everything else.

The agent is started once per remote sync, so `mailmirror agent ROOT` skips importing typer
(about 0.1 s); every other command, and `agent --help`, goes through mailmirror.cli.
"""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "agent" and not sys.argv[2].startswith("-"):
        from mailmirror.transport.agent import main as agent_main

        sys.exit(agent_main(sys.argv[2]))
    from mailmirror.cli import main as cli_main

    cli_main()
