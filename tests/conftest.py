"""Shared test set-up: hypothesis profiles and the rule that CI never skips a real component."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


def require(binary: str) -> str:
    """Path of a real component; skip locally without it, fail under CI=true."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}")
                                    else None)
    if path is None:
        message = f"{binary} is not installed (bash scripts/setup --test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
