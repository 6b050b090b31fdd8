"""An AsyncEngine's health: whether it takes and answers requests now, and if not, why.

Not ok while it closes or is closed, while its batching worker is stopped (its next request restarts
it), and for FAULT_HOLD_S after a worker fault unless a pass succeeds first: long enough for a load
balancer to notice a worker that keeps failing, short enough not to keep an idle engine out of
service for one fault long gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

FAULT_HOLD_S = 10.0


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    state: str  # "serving", "faulted", "stopped", "closing" or "closed"
    reason: str = ""


class WorkerRecord:
    """The batching worker's faults and successes, as health() reads them."""

    def __init__(self) -> None:
        self.faults = 0  # faults survived so far
        self._last_fault: tuple[float, BaseException] | None = None  # (time.monotonic(), error)
        self._last_pass = 0.0  # time.monotonic() of the last pass that succeeded

    def fault(self, error: BaseException) -> None:
        self.faults += 1
        self._last_fault = (time.monotonic(), error)

    def passed(self) -> None:
        self._last_pass = time.monotonic()

    def health(self, closing: bool, closed: bool, worker_stopped: bool) -> EngineHealth:
        if closed:
            return EngineHealth(False, "closed", "the engine is closed")
        if closing:
            return EngineHealth(False, "closing", "the engine is finishing its queued requests and takes no more")
        if worker_stopped:
            return EngineHealth(False, "stopped", "the batching worker stopped; the next request restarts it")
        if self._last_fault is not None:
            when, error = self._last_fault
            age = time.monotonic() - when
            if when > self._last_pass and age < FAULT_HOLD_S:
                reason = f"the batching worker failed {age:.1f} s ago ({error!r}) and restarted; no pass since"
                return EngineHealth(False, "faulted", reason)
        return EngineHealth(True, "serving")
