"""Environment for a Ray cluster started by this process; imports nothing heavy.

Ray reads some of these when ``ray`` is first imported, so call :func:`use_local_ray_env` before
anything imports ray (the CLI does it right after validating the config).
"""

from __future__ import annotations

import os

#: Loopback only (undocumented: binds GCS, raylet, workers, Jobs and Train to 127.0.0.1), no usage
#: reporting, and an explicit auth mode so a stray ~/.ray/auth_token cannot change behaviour.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def use_local_ray_env() -> None:
    """Apply LOCAL_RAY_ENV where the user has not set the variable already."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
