"""How a run's execution can end early (raised inside the turn loop, handled by execution)."""

from __future__ import annotations


class RunCancelled(Exception):
    pass


class RunIncomplete(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
