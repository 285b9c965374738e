"""run_units: one layer direction's hidden units split into blocks, one thread each, in one
parallel region for the whole sequence, each step handed over through atomic counters."""
import numpy as np
from numba import prange

from ._jit import helper, inline, kernel
from .activations import typed
from .atomics import atomic_add, atomic_cas, atomic_load, spin_pause
from .fpmode import denormals_off, restore_fp_mode
from .gemm import PANEL, gemv_gates
from .layout import (C_CODE, C_HOUT, C_HOUTP, C_HP, C_MODE, C_REV, GATES, LSTM, chunk_bounds,
                     copy_values, longest, scratch_views, state_views, weight_views)
from .steps import (begin_rows, emit_rows, needs_phase_b, phase_a, phase_b, project,
                    projects_ahead, update_a)
from .views import carve

# run_units' sync array: one 64-byte line per block, then one line whose slot 0 counts the blocks
# projected. A block's line holds how many of its stages have been claimed (slot 0) and finished
# (DONE), and whether its input projection has been claimed (PROJECTED). Each thread polls the
# others' lines, each written by one thread in the common case: one transfer per line and step.
SYNC_LINE = 8
PROJECTED, DONE = 1, 2
# A waiting thread looks for unclaimed blocks to take over every this many spin-wait hints.
STEAL_SPINS = 16
# Blocks start their product before the wait (run_units) up to this many bytes of recurrent
# weights a block. Beyond it a step is long enough that the wait is a small part of it, and the
# split product costs more: its three passes over k, and a weight slice larger than L2 then
# misses the lines the step before left in cache in the other walking order (H = 256 on two
# threads: 2-4 % faster without, H = 512: ~6 %; H = 64: 10-15 % faster with).
EARLY_START_MAX_BYTES = 256 * 1024


def sync_array(chunks):
    """A sync array for run_units with `chunks` blocks (each call of run_units zeroes it)."""
    return np.zeros((chunks + 1) * SYNC_LINE, np.int64)


@kernel(parallel=True)
def run_units(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, sbuf, sync, chunks):
    """chunks > 1 threads in one parallel region for the whole sequence: each step's hidden units
    are split into `chunks` blocks (whole panels), thread k works block k, so its slice of R stays
    in its core's cache. A step is one stage (two when a second phase follows: LSTM projection,
    GRU lbr=0). sync (sync_array; zeroed here, before the threads start) hands out the blocks:
    for each stage a thread claims its own block, waits until every block of the previous stage
    is done, then works its block.
    Claiming (not fixed ownership) is what makes the wait safe: while it waits, a thread takes
    over any block of the awaited stage that nobody has claimed, so a thread that never arrives
    (the region ran on fewer threads, or it was descheduled) has its blocks done by the others
    and no wait can hang.

    With one row and one stage per step and small blocks (_starts_early), a block's product starts
    before the wait: the part over the block's own units of h (which its thread has just
    computed) runs while the other blocks finish, and the wait then only has to cover the rest.
    Every block's product sums k in that order, whichever thread works it, so results do not
    depend on the scheduling.

    The walking order alternates across calls as serial's does (the scratch's last slot keeps
    the parity): a one-step call after one that walked forward runs each block's recurrent
    product backward and then projects the block's input, backward too, with no projection up
    front, so that each thread starts on the lines of its slice that the call before read last."""
    h, c, y = state_views(cfg, hs, cs, slot, y3)
    steps, rows = x.shape[0], x.shape[1]
    w_ih, bias, r, rbias, peep, w_hr, zeros = weight_views(wbuf, wpk, cfg)
    xp, gates, hb, aux, cb = scratch_views(sbuf, cfg, rows, steps)
    x2 = carve(x, 0, (steps * rows, x.shape[2]))
    for i in range(sync.size):
        sync[i] = 0
    begin_rows(0, rows, cfg, lengths, h, c, hb)
    # the cell state in rows whose blocks start on cache lines: a block boundary inside a line of
    # the caller's c made both threads write that line every step (~0.2 us a step at H64)
    lstm = cfg[C_MODE] == LSTM
    if lstm:
        for n in range(rows):
            copy_values(c[n], cb[n], c.shape[1])
    stages = 2 if needs_phase_b(cfg) else 1
    total = longest(lengths, 0, rows) * stages
    early = _starts_early(stages, rows, chunks, cfg, r)
    # blocks that start early run their product in parts, none of which carries the projection
    carried = projects_ahead(cfg, lengths) and not early
    ahead = (x2, w_ih, bias, carried)
    flip = 1 if sbuf[sbuf.size - 1] != 0 else 0
    late = steps == 1 and flip == 1 and not early
    for chunk in prange(chunks):
        ch = np.int64(chunk)  # prange's index is unsigned: one signature for the helpers below
        # the input projection first (what the steps do not carry), by blocks of units (one
        # parallel region for the whole call: a second costs a region start and much compile time)
        if not late:
            _project_units(ch, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried)
        fp_mode = denormals_off()
        mine = True  # this thread worked its block of the previous stage
        for stage in range(total):
            claimed = atomic_cas(sync, ch * SYNC_LINE, stage, stage + 1)
            started = claimed and mine and early
            if started:
                _own_part(ch, stage, chunks, cfg, r, rbias, gates, hb)
            # checked here first: a helper call passes each array as 7-9 scalars on the stack
            # (moving this check into an inline _wait_stage for both call sites measured 3-7 %
            # slower at H64: LLVM lays the step loop out worse)
            if stage > 0 and not _stage_done(stage - 1, chunks, sync):
                _wait_stage(stage - 1, stages, chunks, sync, cfg, fcfg, lengths, r, rbias, peep,
                            w_hr, zeros, ahead, flip, late, xp, gates, hb, aux, cb, y, yd, h)
            if started:
                _finish_block(ch, stage, chunks, cfg, fcfg, lengths, r, peep, xp, gates, hb, aux,
                              cb, y, yd, h)
            elif claimed:
                _unit_block(ch, stage, stages, chunks, cfg, fcfg, lengths, r, rbias, peep, w_hr,
                            zeros, ahead, flip, late, xp, gates, hb, aux, cb, y, yd, h)
            if claimed:
                atomic_add(sync, ch * SYNC_LINE + DONE, 1)
            mine = claimed
        _wait_stage(total - 1, stages, chunks, sync, cfg, fcfg, lengths, r, rbias, peep, w_hr,
                    zeros, ahead, flip, late, xp, gates, hb, aux, cb, y, yd, h)
        restore_fp_mode(fp_mode)
    if lstm:
        for n in range(rows):
            copy_values(cb[n], c[n], c.shape[1])
    sbuf[sbuf.size - 1] = (flip + longest(lengths, 0, rows)) & 1


@inline
def _starts_early(stages, rows, chunks, cfg, r):
    """Whether run_units starts each block's product before the wait (see EARLY_START_MAX_BYTES):
    one row, one stage a step, blocks of few weights."""
    block_bytes = r.size // chunks * r.itemsize
    return stages == 1 and rows == 1 and block_bytes <= EARLY_START_MAX_BYTES


@helper
def _project_units(block, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried):
    """The input projection by the unit split's blocks (every row, the block's units of every
    gate; only the rows no step carries when `carried`, see project): the thread's own block
    first, so that the columns of xp its steps read are in its own cache, then any block nobody
    has claimed; returns once every block is done (a block is only waited for once a running
    thread has claimed it: no wait can hang)."""
    done = chunks * SYNC_LINE
    _project_block(block, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried)
    for other in range(chunks):
        _project_block(other, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried)
    while atomic_load(sync, done) < chunks:
        spin_pause()


@helper
def _project_block(block, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried):
    """Project block `block` of the unit split (project) if no thread has claimed it yet."""
    claim = block * SYNC_LINE + PROJECTED
    if atomic_load(sync, claim) == 0 and atomic_cas(sync, claim, 0, 1):
        j0, j1 = chunk_bounds(cfg[C_HP], chunks, block, PANEL)
        project(x2, w_ih, bias, xp, cfg, lengths, 1, 0, j0, j1, carried, 0)
        atomic_add(sync, chunks * SYNC_LINE, 1)


@helper
def _wait_stage(stage, stages, chunks, sync, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
                ahead, flip, late, xp, gates, hb, aux, c, y, yd, h):
    """Return once every block of `stage` (< 0: none) is done, working any block of it that
    nobody has claimed."""
    if stage < 0:
        return
    spins = 0
    while not _stage_done(stage, chunks, sync):
        spin_pause()
        spins += 1
        if spins == STEAL_SPINS:
            spins = 0
            for block in range(chunks):
                slot = block * SYNC_LINE
                if atomic_load(sync, slot) == stage and atomic_cas(sync, slot, stage, stage + 1):
                    _unit_block(block, stage, stages, chunks, cfg, fcfg, lengths, r, rbias,
                                peep, w_hr, zeros, ahead, flip, late, xp, gates, hb, aux, c, y,
                                yd, h)
                    atomic_add(sync, slot + DONE, 1)


@inline
def _stage_done(stage, chunks, sync):
    """Whether every block has finished stage `stage` (blocks finish their stages in order)."""
    for block in range(chunks):
        if atomic_load(sync, block * SYNC_LINE + DONE) <= stage:
            return False
    return True


@inline
def _own_range(block, chunks, cfg):
    """Units [j0, j1) of a block and the part [k0, k1) of h that they produce."""
    j0, j1 = chunk_bounds(cfg[C_HP], chunks, block, PANEL)
    k_len = cfg[C_HOUT]
    return j0, j1, min(j0, k_len), min(j1, k_len)


@helper
def _own_part(block, stage, chunks, cfg, r, rbias, gates, hb):
    """The first part of a one-row, one-stage block's product: k over the block's own units."""
    j0, j1, k0, k1 = _own_range(block, chunks, cfg)
    mode = cfg[C_MODE]
    gemv_gates(hb[stage & 1], 0, k0, k1, cfg[C_HOUT], r, GATES[mode], 0, GATES[mode], j0, j1,
               cfg[C_HP], rbias, gates, stage & 1)


@inline
def _finish_block(block, stage, chunks, cfg, fcfg, lengths, r, peep, xp, gates, hb, aux, c, y,
                  yd, h):
    """The rest of a one-row, one-stage block after _own_part: k before and after the block's
    own units, then the update and the output."""
    j0, j1, k0, k1 = _own_range(block, chunks, cfg)
    mode = cfg[C_MODE]
    k_len = cfg[C_HOUT]
    src = hb[stage & 1]
    dst = hb[(stage + 1) & 1]
    acc = gates[0]
    if k0 > 0:
        gemv_gates(src, 0, 0, k0, k_len, r, GATES[mode], 0, GATES[mode], j0, j1, cfg[C_HP], acc,
                   gates, stage & 1)
    if k1 < k_len:
        gemv_gates(src, 0, k1, k_len, k_len, r, GATES[mode], 0, GATES[mode], j0, j1, cfg[C_HP],
                   acc, gates, stage & 1)
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], acc)
    update_a(stage, 0, 1, j0, j1, cfg, fcfg, codes, clip, lengths, peep, xp, gates, src, dst, aux,
              c, True)
    emit_rows(stage, 0, 1, j0, j1, cfg[C_REV] != 0, lengths, dst, 0, y, yd, h)


@helper
def _unit_block(block, stage, stages, chunks, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
                ahead, flip, late, xp, gates, hb, aux, c, y, yd, h):
    """Block `block` of stage `stage`, all of it (its thread, or one that took it over); ahead
    and late as in phase_a (late: the block projects its own input), steps s with (s + flip)
    odd walk backward."""
    rows = lengths.shape[0]
    if _starts_early(stages, rows, chunks, cfg, r):  # the same order of k as run_units
        _own_part(block, stage, chunks, cfg, r, rbias, gates, hb)
        _finish_block(block, stage, chunks, cfg, fcfg, lengths, r, peep, xp, gates, hb, aux, c, y,
                      yd, h)
        return
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], rbias)
    s = stage // stages
    src = hb[s & 1]
    dst = hb[(s + 1) & 1]
    back = (s + flip) & 1
    if stage % stages == 0:
        j0, j1 = chunk_bounds(cfg[C_HP], chunks, block, PANEL)
        phase_a(s, back, ahead, late, 0, rows, j0, j1, cfg, fcfg, codes, clip, lengths, r,
                 rbias, peep, xp, gates, src, dst, aux, c)
        if stages == 1:
            emit_rows(s, 0, rows, j0, j1, cfg[C_REV] != 0, lengths, dst, 0, y, yd, h)
    else:
        j0, j1 = chunk_bounds(cfg[C_HOUTP], chunks, block, PANEL)
        phase_b(s, back, 0, rows, j0, j1, cfg, fcfg, codes, clip, lengths, r, w_hr, zeros, xp,
                 gates, src, dst, aux)
        emit_rows(s, 0, rows, j0, j1, cfg[C_REV] != 0, lengths, dst, 0, y, yd, h)
