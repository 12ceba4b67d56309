"""Shared test set-up: hypothesis profiles and the rule that CI never skips a real component."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


def missing(what: str) -> None:
    """A real component is absent: skip locally, fail under CI=true (it must be installed)."""
    message = f"{what} is not installed (bash scripts/setup --test installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(binary: str) -> str:
    """Path of a real component; see missing() for what happens without it."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        missing(binary)
    return path
