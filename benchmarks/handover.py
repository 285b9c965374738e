"""How long two cores take to hand work over: a counter passed back and forth between the two
threads of one numba parallel region, as fastrnn's unit split hands each step over.

On a shared VM this moves while the machine runs (the host may place the two vCPUs on one
physical core, or on distant ones, for minutes at a time), and with it every two-thread time at
small H; the runner measures it between its rounds so that a report says when that happened.
"""
import time

import numba
import numpy as np
from numba import prange

from fastrnn.kernels.atomics import atomic_add, atomic_load, spin_pause

BALL, ARRIVED, ABORT = 0, 8, 16  # slots on cache lines of their own
PATIENCE = 10_000_000            # spins before a thread stops waiting for the other


@numba.njit(parallel=True, cache=True)
def _ping_pong(sync, trips, patience):
    """Thread 0 moves the ball from 2i to 2i + 1, thread 1 from 2i + 1 to 2i + 2, i < trips.
    A thread that does not see the other arrive (the region ran its iterations one after the
    other, on one thread) or move the ball within `patience` spins sets ABORT, and both stop."""
    for ch in prange(2):
        me = np.int64(ch)
        atomic_add(sync, ARRIVED, 1)
        spins = 0
        while atomic_load(sync, ARRIVED) < 2 and atomic_load(sync, ABORT) == 0:
            spin_pause()
            spins += 1
            if spins == patience:
                atomic_add(sync, ABORT, 1)
        i = 0
        while i < trips and atomic_load(sync, ABORT) == 0:
            target = 2 * i + me
            spins = 0
            while atomic_load(sync, BALL) != target and atomic_load(sync, ABORT) == 0:
                spin_pause()
                spins += 1
                if spins == patience:
                    atomic_add(sync, ABORT, 1)
            if atomic_load(sync, ABORT) == 0:
                atomic_add(sync, BALL, 1)
            i += 1


def round_trip_ns(trips: int = 20_000, runs: int = 5) -> float | None:
    """The fastest of `runs` measurements of one round trip (ns), or None where two threads
    cannot run at once (numba's pool has one thread, or the other never came)."""
    if numba.get_num_threads() < 2:
        return None
    times = []
    for _ in range(runs + 1):
        sync = np.zeros(3 * 8, np.int64)
        t0 = time.perf_counter()
        _ping_pong(sync, trips, PATIENCE)
        times.append(time.perf_counter() - t0)
        if sync[ABORT]:
            return None
    return min(times[1:]) / trips * 1e9  # the first call compiles or loads the kernel
