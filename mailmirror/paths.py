"""Where mailmirror and failover keep their files by default (XDG via platformdirs).

Shared by both packages so one config file and one state database serve them both.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "mailmirror"
STATE_ENV = "MAILMIRROR_STATE"
CONFIG_ENV = "MAILMIRROR_CONFIG"


def default_state_path() -> Path:
    """The state database: $MAILMIRROR_STATE, else the XDG state dir."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_state_path(APP) / "state.sqlite3"


def default_config_path() -> Path:
    """The TOML config: $MAILMIRROR_CONFIG, else the XDG config dir."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_config_path(APP) / "config.toml"
