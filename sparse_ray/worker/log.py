"""Rank-0-only printing on workers."""

from __future__ import annotations

import socket
import sys


class RankLog:
    """Prints on rank 0 only, tagged with host and rank (Ray forwards it to the driver)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.tag = f"[{socket.gethostname()}:{rank}]"

    def __call__(self, message: str) -> None:
        if self.rank == 0:
            # write, not print: Ray Train patches print() and would tee every line twice
            sys.stdout.write(f"{self.tag} {message}\n")
            sys.stdout.flush()
