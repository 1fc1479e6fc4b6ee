"""The garbage collector of a `callscribe serve` process, set for a server that holds many
connections: short pauses, rarely.

CPython's cyclic collector stops the whole process while it runs, and a full (oldest-generation)
collection scans every object the process holds. A server with 1,000 subscribers holds a few
hundred thousand; on the benchmark machine its full collections took 80-200 ms, about every five
seconds under a fan-out, and every call's audio and every subscriber waited that long (fan-out p99
290 ms where the median was 80 ms). Two settings remove most of it:

- `gc.freeze()` once the code is loaded: the ~80,000 objects of the imported modules (35 ms of
  every full collection here) move to a generation that is never scanned again.
- A young-generation threshold of `YOUNG_THRESHOLD` allocations instead of CPython's 700: the
  messages, frames and timers of the traffic mostly die between two collections instead of being
  promoted to the old generations, whose growth is what brings on full collections. The cost is
  cyclic garbage living longer: up to that many container objects between collections (what they
  hold, e.g. a traceback's frames and their buffers, too). In the benchmark RSS did not move: 111 MB
  with 1,000 subscribers either way, the same memory per call at 40 calls.

Only the process that serves sets these (`callscribe serve` and its workers): a program that runs
`serve` itself, or a test, keeps its own collector settings.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
"""Allocations (less deallocations) of container objects between two young collections."""
MIDDLE_THRESHOLD = 20
"""Young collections between two middle-generation ones."""
OLD_THRESHOLD = 100
"""Middle collections before the old generation is considered (CPython also waits until it grew by 25%)."""


def tune_for_serving() -> None:
    """Freeze what is loaded so far and collect less often (see the module's docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
