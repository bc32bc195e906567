"""Whether a named model can load on this machine, answered in seconds rather than after a minute of retries.

A model name is a local directory or a Hugging Face hub id. Offline (no route to huggingface.co,
or ``HF_HUB_OFFLINE`` set), ``transformers`` retries every file of a hub id five times with
back-off before it fails, about 70 seconds per load, and prints each retry. Every command that
loads a user-named model asks :func:`model_unavailable` first: a local directory or a hub id in
the local Hugging Face cache loads; anything else offline is a one-line error at once.
"""

from __future__ import annotations

import os
import socket

#: Seconds to wait for a TCP connection to the hub before calling it unreachable.
HUB_TIMEOUT_S = 3.0


def hub_unreachable(timeout: float = HUB_TIMEOUT_S) -> str | None:
    """Why the hub (``HF_ENDPOINT``, a mirror included; through ``HTTPS_PROXY`` where one is set)
    cannot be reached: offline mode, DNS, the connection; or None. At most ``timeout`` seconds."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    target = urlsplit(_proxy(url.scheme, url.hostname or "") or constants.ENDPOINT)
    host, port = target.hostname or "huggingface.co", target.port or (80 if target.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"cannot connect to {target.netloc}: {exc}"
    return None


def _proxy(scheme: str, host: str) -> str | None:
    """The proxy URL the hub client would use for ``host`` (``HTTPS_PROXY`` etc., ``NO_PROXY``)."""
    from urllib.request import getproxies, proxy_bypass

    proxy = getproxies().get(scheme)
    return None if not proxy or proxy_bypass(host) else proxy


def local_path(name: str) -> bool:
    """Whether ``name`` can only mean the local file system (a hub id is ``name`` or ``org/name``)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def cached(name: str) -> bool:
    """Whether the hub id ``name`` has its ``config.json`` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def model_unavailable(name: str) -> str | None:
    """Why the model ``name`` cannot load here, in one line, or None if it may (a local directory,
    a cached hub id, or a hub id while the hub answers: the hub then says whether it exists)."""
    if os.path.exists(name):
        return None
    if local_path(name):
        return f"{name} does not exist"
    if cached(name):
        return None
    reason = hub_unreachable()
    return f"{name} is neither a local directory nor in the Hugging Face cache, and {reason}" if reason else None


def load_kwargs(name: str) -> dict[str, bool]:
    """Loader keywords for ``name``: a cached hub id loads from the cache alone while the hub is
    unreachable, instead of retrying it."""
    return {} if os.path.exists(name) or hub_unreachable() is None else {"local_files_only": True}
