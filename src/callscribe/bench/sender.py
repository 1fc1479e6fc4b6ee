"""The benchmark's clock: one task sends every simulated call's frames in real time.

100 frames per second per call (both tracks every 20 ms). Calls are spread over twenty 1 ms phases,
so the server sees a steady stream rather than a burst every 20 ms. If the sender falls behind it
catches up (and records by how much in :attr:`RealTimeSender.lag`); it never skips a frame.
"""

from __future__ import annotations

import time
from array import array

import trio

from callscribe.bench.calls import FRAME_MS, SimCall

PHASES = 20
"""The 20 ms period is cut into this many phases (1 ms each)."""
_TICK_S = FRAME_MS / 1000


class RealTimeSender:
    """Sends every registered call's frames in real time from one task."""

    def __init__(self) -> None:
        self._phases: list[list[SimCall]] = [[] for _ in range(PHASES)]
        self._next_phase = 0
        self.frames_sent = 0
        self.lag = array("d")
        """How late each phase with calls ran, seconds."""
        self._closing = False
        self.active = 0
        """Calls still sending."""

    def add(self, call: SimCall) -> None:
        """Send ``call``'s frames from now on (its connection must be open)."""
        self._phases[self._next_phase].append(call)
        self._next_phase = (self._next_phase + 7) % PHASES  # 7 is coprime with 20: spreads in any order
        self.active += 1

    def close(self) -> None:
        """Return from `run` once every call has sent its stop."""
        self._closing = True

    async def run(self) -> None:
        slot = _TICK_S / PHASES
        phases = self._phases
        origin = time.monotonic()
        step = 0
        while not (self._closing and self.active <= 0):
            for ahead in range(PHASES):
                if phases[(step + ahead) % PHASES]:
                    step += ahead
                    break
            else:  # nobody to serve this period
                step += PHASES
                await trio.sleep(max(0.0, origin + step * slot - time.monotonic()))
                continue
            target = origin + step * slot
            delay = target - time.monotonic()
            if delay > 0:
                await trio.sleep(delay)
            else:
                await trio.lowlevel.checkpoint()  # behind: catch up, but let the rest of the load run
            self.lag.append(max(0.0, time.monotonic() - target))
            phase = step % PHASES
            calls = phases[phase]
            kept: list[SimCall] | None = None
            sent = 0
            for i, call in enumerate(calls):
                before = call.ticks
                alive = call.tick()
                sent += call.ticks - before
                if not alive:
                    if kept is None:
                        kept = calls[:i]
                    self.active -= 1
                elif kept is not None:
                    kept.append(call)
            if kept is not None:
                phases[phase] = kept
            self.frames_sent += 2 * sent
            step += 1
