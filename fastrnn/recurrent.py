"""One recurrent layer (one or two directions) on the kernels: weight prepacking and the call.

`DirectionParams` takes one direction's weights in PyTorch's layout and gate order and packs them
once into the layout the kernels stream; a `Stack` runs layers of directions over a batch, with
the calls of each shape worked out once; `run_layer` checks the input of a one-layer stack.
Layers (fastrnn.layers), streams and the ONNX converter all run through here.
"""
import functools
import math
import threading

import numpy as np

from . import activations as acts
from .cpu_caches import core_l2_bytes
from .errors import ArgumentError, DTypeError, ShapeError
from .gates import NUM_GATES
from .kernels import engine, fused, layout, units
from .kernels._jit import compiled_for
from .kernels.gemm import PANEL, pack_gates, padded, unpack_gates
from .kernels.simd import CARRY_PROJECTION
from .threads import workers
from .validation import as_array, check_clip, check_dtype, check_weight_dtype, real_array

def _matrix(name, value, shape, dtype):
    return np.ascontiguousarray(real_array(value, name, shape), dtype=dtype)


class DirectionParams:
    """One direction of one layer, prepacked for the kernels."""

    def __init__(self, mode, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None, peephole=None,
                 reverse=False, activations=None, clip=None, linear_before_reset=True,
                 input_forget=False, dtype=np.float32, weight_dtype=None):
        if mode not in NUM_GATES:
            raise ArgumentError(f"mode must be one of {sorted(NUM_GATES)}, got {mode!r}")
        dtype = check_dtype(dtype)
        self.weight_dtype = check_weight_dtype(weight_dtype, dtype)
        gates = NUM_GATES[mode]
        w_hh = np.asarray(w_hh)
        w_ih = np.asarray(w_ih)
        if w_hh.ndim != 2 or w_hh.shape[0] % gates or w_hh.shape[0] == 0:
            raise ShapeError(f"{mode} weight_hh must be ({gates}*H, H_out), got {w_hh.shape}")
        hidden = w_hh.shape[0] // gates
        if w_ih.ndim != 2:
            raise ShapeError(f"weight_ih must be 2-D ({gates * hidden}, I), got {w_ih.shape}")
        self.mode = mode
        self.dtype = dtype
        self.hidden_size = hidden
        self.input_size = w_ih.shape[1]
        self.proj_size = 0 if w_hr is None else np.asarray(w_hr).shape[0]
        if mode != "LSTM" and (w_hr is not None or peephole is not None or input_forget):
            raise ArgumentError(f"{mode} has no projection, peepholes or input_forget")
        self.hidden_out = self.proj_size or hidden
        self.reverse = bool(reverse)
        self.linear_before_reset = bool(linear_before_reset)
        self.input_forget = bool(input_forget)
        clip = check_clip(clip)
        self.clip = math.inf if clip is None else clip
        self.activations = acts.normalize_direction(mode, activations)

        gh = gates * hidden
        w_ih = _matrix("weight_ih", w_ih, (gh, self.input_size), dtype)
        w_hh = _matrix("weight_hh", w_hh, (gh, self.hidden_out), dtype)
        b_ih = np.zeros(gh, dtype) if b_ih is None else _matrix("bias_ih", b_ih, (gh,), dtype)
        b_hh = np.zeros(gh, dtype) if b_hh is None else _matrix("bias_hh", b_hh, (gh,), dtype)
        bias = b_ih + b_hh
        rbias = np.zeros(gh, dtype)  # added to the per-step recurrent product
        if mode == "GRU" and self.linear_before_reset:  # Rbh stays inside r * (Rh h + Rbh)
            rbias[2 * hidden:] = b_hh[2 * hidden:]
            bias[2 * hidden:] = b_ih[2 * hidden:]
        peep = np.zeros((3, hidden), dtype)
        if peephole is not None:
            peep = _matrix("peephole", peephole, (3 * hidden,), dtype).reshape(3, hidden)
        proj = np.zeros((0, hidden), dtype)
        if w_hr is not None:
            proj = _matrix("weight_hr", w_hr, (self.proj_size, hidden), dtype)
        # Two flat, 64-byte aligned buffers in the order the kernels stream: the weight matrices
        # (_wpk, in weight_dtype), each gate's rows padded to whole panels (so a block of hidden
        # units is whole panels of every gate) and packed as panels (kernels/gemm.py); the
        # vectors (_wbuf, in dtype).
        self._gates = gates
        self._hp = padded(hidden)
        hout_p = padded(self.hidden_out)
        proj_p = np.zeros((0,), dtype)
        if w_hr is not None:
            proj_p = pack_gates(np.pad(proj, ((0, hout_p - self.proj_size), (0, 0))), 1)
        matrices = [pack_gates(self._pad_gates(w_ih), gates),
                    pack_gates(self._pad_gates(w_hh), gates), proj_p]
        vectors = [self._pad_gates(bias[:, None])[:, 0], self._pad_gates(rbias[:, None])[:, 0],
                   peep, np.zeros(max(gates * self._hp, hout_p), dtype)]
        self._wpk, (o_ih, o_hh, o_hr) = _flat(matrices, self.weight_dtype)
        self._wbuf, (o_bias, o_rbias, o_peep, o_zeros) = _flat(vectors, dtype)
        offsets = [o_ih, o_bias, o_hh, o_rbias, o_peep, o_hr, o_zeros]
        codes, alpha, beta = acts.kernel_arrays(self.activations)
        self.act = (codes, alpha, beta)
        pad = 3 - codes.size  # the kernels read three of each
        codes = np.concatenate([codes, np.full(pad, codes[-1])])
        alpha = np.concatenate([alpha, np.zeros(pad)])
        beta = np.concatenate([beta, np.zeros(pad)])
        fast = tuple(n for n, _, _ in self.activations) == acts.DEFAULTS[mode]
        self._cfg = np.array([_MODES[mode], hidden,
                              self.hidden_out, self.input_size, self.proj_size, self.reverse,
                              self.linear_before_reset, self.input_forget, fast, *codes,
                              self._hp, hout_p, *offsets, self._projects_ahead(),
                              peephole is not None, gates * self._hp, 0],
                             dtype=np.int64)
        assert self._cfg.size == layout.CFG_LEN
        self._fusable = mode in ("LSTM", "RNN") and self.proj_size == 0
        self._fused = None  # ([W_ih, W_hh] side by side, both biases), built on first use
        # The kernels that run every unit of a step at once (one thread, rows split, streams) lay
        # the gates flat where that computes fewer columns (_FLAT_NARROWER); built on first use.
        self._flat_gates = (
            (mode == "LSTM" and self.proj_size == 0
             or mode == "GRU" and self.linear_before_reset)
            and padded(gates * hidden) <= _FLAT_NARROWER * gates * self._hp)
        self._flat = None
        self._entries = {}  # kernel -> its compiled function for this direction's argument types
        self._fcfg = np.array([self.clip, *alpha, *beta], dtype=np.float64)
        self.dummy_c = np.zeros((1, 0, hidden), dtype)  # the kernels' c for RNN and GRU
        self._recurrent_bytes = (w_hh.size + proj.size) * self.weight_dtype.itemsize
        self._step_bytes = self._recurrent_bytes + w_ih.size * self.weight_dtype.itemsize

    def __getstate__(self) -> dict:
        """Without the compiled functions (which cannot be pickled): found again on first use."""
        return dict(self.__dict__, _entries={})

    def _projects_ahead(self) -> bool:
        """Whether one-row calls carry the input projection inside the recurrent steps
        (kernels/steps.py, ahead_slot) instead of running it before them: float32 on a target
        where that pays (simd.CARRY_PROJECTION), every gate in one product (not GRU
        linear_before_reset=0, nor RNN's one-gate tiles), and input plus recurrent weights of
        at most _AHEAD_MAX_BYTES."""
        weights = self._gates * self._hp * (self.input_size + self.hidden_out)
        return (self.dtype == np.float32 and CARRY_PROJECTION
                and (self.mode == "LSTM" or (self.mode == "GRU" and self.linear_before_reset))
                and weights * self.weight_dtype.itemsize <= _AHEAD_MAX_BYTES)

    def _pad_gates(self, w):
        """(G*H, K) -> (G*Hp, K): each gate's rows followed by zero rows up to whole panels."""
        rows = w.reshape(self._gates, self.hidden_size, -1)
        rows = np.pad(rows, ((0, 0), (0, self._hp - self.hidden_size), (0, 0)))
        return rows.reshape(self._gates * self._hp, -1)

    def _fused_weights(self):
        """(packed [W_ih | W_hh] (K = I + H), b_ih + b_hh) for run_fused, packed once on first use
        (only batches of 8+ rows take that path, so smaller workloads never pay its memory). Its
        product is one gate of G*H columns, gate k's units at k*H, padded to whole panels once,
        not per gate: an LSTM of H = 100 computes 416 columns instead of 4 * 128."""
        if self._fused is None:
            both = np.concatenate([self._unpacked(0, self.input_size),
                                   self._unpacked(2, self.hidden_out)], axis=1)
            bsum = self._laid_flat((self._vector(1) + self._vector(3))[:, None])[:, 0]
            both = _flat([pack_gates(self._laid_flat(both), 1)], self.weight_dtype)[0]
            self._fused = (both, _flat([bsum], self.dtype)[0])
        return self._fused

    def _unpacked(self, slot: int, k: int):
        """The weight matrix at cfg offset slot (0: W_ih, 2: W_hh), (G*Hp, k) as packed: each
        gate's rows padded to whole panels (float16 weights as float16)."""
        wpk = self._wpk.view(np.float16) if self._wpk.dtype == np.uint16 else self._wpk
        at = self._cfg[layout.C_OFF + slot]
        return unpack_gates(wpk[at:at + self._gates * self._hp * k], self._gates, k)

    def _vector(self, slot: int):
        """The G*Hp vector at cfg offset slot (1: the input bias, 3: the recurrent one)."""
        at = self._cfg[layout.C_OFF + slot]
        return self._wbuf[at:at + self._gates * self._hp]

    def _laid_flat(self, rows):
        """(G*Hp, K) rows, each gate padded to whole panels, as (padded(G*H), K): the gates one
        after another, gate k's units at k*H, padded once."""
        gates, hid = self._gates, self.hidden_size
        rows = rows.reshape(gates, self._hp, -1)[:, :hid].reshape(gates * hid, -1)
        return np.pad(rows, ((0, padded(gates * hid) - gates * hid), (0, 0)))

    def scratch_size(self, steps: int, rows: int) -> int:
        """Elements of the scratch buffer one call of this direction over (steps, rows) needs."""
        return _scratch_size(self._gates, self.hidden_size, self.hidden_out, steps, rows)

    def own_args(self, scratch):
        """This direction's own kernel arguments but the state: (wbuf, wpk, cfg, fcfg, scratch),
        each gate in panels of its own (what every kernel reads, the unit split included)."""
        return self._wbuf, self._wpk, self._cfg, self._fcfg, scratch

    def whole_step_args(self, scratch):
        """own_args for a kernel that runs every unit of a step at once (_whole_steps)."""
        return (*self._whole_steps(), self._fcfg, scratch)

    def _whole_steps(self):
        """(wbuf, wpk, cfg) for the kernels that run every unit of a step at once (serial, row
        split, streams, both directions at once): the gates laid flat where that computes fewer
        columns (layout.C_FLAT), else the panels of every gate that the unit split needs."""
        if not self._flat_gates:
            return self._wbuf, self._wpk, self._cfg
        if self._flat is None:
            hid = self.hidden_size
            width = padded(self._gates * hid)
            matrices = [pack_gates(self._laid_flat(self._unpacked(0, self.input_size)), 1),
                        pack_gates(self._laid_flat(self._unpacked(2, self.hidden_out)), 1),
                        np.zeros(0, self.dtype)]
            o_peep = self._cfg[layout.C_OFF + 4]
            vectors = [self._laid_flat(self._vector(1)[:, None])[:, 0],
                       self._laid_flat(self._vector(3)[:, None])[:, 0],
                       self._wbuf[o_peep:o_peep + 3 * hid], np.zeros(width, self.dtype)]
            wpk, (o_ih, o_hh, o_hr) = _flat(matrices, self.weight_dtype)
            wbuf, (o_bias, o_rbias, o_peep, o_zeros) = _flat(vectors, self.dtype)
            cfg = self._cfg.copy()
            cfg[layout.C_OFF:layout.C_OFF + 7] = o_ih, o_bias, o_hh, o_rbias, o_peep, o_hr, o_zeros
            cfg[layout.C_AHEAD] = 0  # the carried projection's tiles gather each gate's panels
            cfg[layout.C_GW] = width
            cfg[layout.C_FLAT] = 1
            self._flat = (wbuf, wpk, cfg)
        return self._flat

    def stream_call(self, buf, rows, h, c, y, scratch):
        """(kernel, args) of one streaming step of this direction over `rows` batch rows, but the
        step's input, which the kernel takes first; its other arrays lie in the buffer buf at
        these offsets (c: LSTM only; the scratch: scratch_size(1, rows) elements). Callers build
        it once and call kernel(x, *args) per step."""
        wbuf, wpk, cfg = self._whole_steps()
        meta = np.array([*cfg, rows, h, c, y, scratch, self.scratch_size(1, rows)]
                        + [1] * rows, dtype=np.int64)
        assert meta.size == engine.S_LENGTHS + rows
        return engine.run_stream, (buf, meta, wbuf, wpk, self._fcfg)

    def directions_concurrently(self, steps: int, rows: int, thread_count: int) -> bool:
        """Whether a bidirectional layer of these parameters runs its two directions at once,
        one thread each: with two or three threads, for batches too small to split by rows and
        calls long enough to pay for the parallel region. (With more threads each direction in
        turn splits its hidden units over all of them.)"""
        return (2 <= thread_count < 4 and rows < _ROW_SPLIT_MIN_ROWS
                and steps * rows * self._recurrent_bytes >= _UNIT_SPLIT_MIN_BYTES)

    def bind(self, route, rows: int, slot: int, yd: int, sync=None):
        """call(x, lengths, hs, cs, y, scratch) running this direction over x (T, rows, I) the
        way `route` (this direction's route for that shape) says: hs (S, N, H_out) and, for
        LSTM, cs (S, N, H) (else the empty `dummy_c`) hold the initial state in slot `slot` and
        receive the final one there; it writes columns [yd*H_out, (yd+1)*H_out) of the layer
        output y (T, N, D*H_out). Every array is C-contiguous, aligned and writeable
        (`canonical`), of the direction's dtype, lengths int64; scratch is the calling thread's
        workspace of scratch_size(T, rows) elements (unused by FUSED). sync: the unit split's
        sync array (units.sync_array of the route's chunks), used by every call of one thread at
        a time (the kernel zeroes it); by default each call makes its own."""
        kind, chunks = route
        fcfg = self._fcfg
        # the fused product (weights of its own) and the unit split read each gate's panels
        wbuf, wpk, cfg = ((self._wbuf, self._wpk, self._cfg) if kind in (FUSED, UNITS)
                          else self._whole_steps())
        if kind == FUSED:
            wr, bsum = self._fused_weights()
            width = self.input_size + self.hidden_out
            kernel, extra = ((fused.run_fused, (chunks,)) if chunks > 1
                             else (fused.run_fused_serial, ()))

            def call(x, lengths, hs, cs, y, scratch):
                xh = workspace("xh", 2 * rows * width, self.dtype).reshape(2, rows, width)
                gates = workspace("gates", rows * bsum.size, self.dtype).reshape(rows, bsum.size)
                self._call(kernel, (x, wr, bsum, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y,
                                    yd, xh, gates, *extra))
            return call
        if kind == UNITS:
            def call(x, lengths, hs, cs, y, scratch):
                # a stream's split step takes a few microseconds: no helper layers around it
                args = (x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y, yd, scratch,
                        units.sync_array(chunks) if sync is None else sync, chunks)
                self._entry(units.run_units, args)(*args)
            return call
        if kind == ROWS:
            def call(x, lengths, hs, cs, y, scratch):
                self._call(engine.run_parallel, (x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot,
                                                 y, yd, scratch, chunks))
            return call
        entry = None  # the most frequent call, a few microseconds at small H: no dict lookup

        def call(x, lengths, hs, cs, y, scratch):
            nonlocal entry
            if entry is None:
                entry = self._entry(engine.run_serial, (x, wbuf, wpk, cfg, fcfg, lengths, hs,
                                                        cs, slot, y, yd, scratch))
            entry(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y, yd, scratch)
        return call

    def _call(self, kernel, args):
        """kernel(*args) through its compiled function for these arguments' types (_entry)."""
        self._entry(kernel, args)(*args)

    def _entry(self, kernel, args):
        """kernel's compiled function for these arguments' types, found once per kernel: the
        arrays a call passes are always of the same types (see `bind`), and numba's dispatch
        types each of the 12-14 arguments on every call (~0.3 us)."""
        entry = self._entries.get(kernel)
        if entry is None:
            entry = self._entries[kernel] = compiled_for(kernel, args)
        return entry

    def route(self, steps: int, rows: int, thread_count: int):
        """(kind, chunks): the kernel a call over (steps, rows) with thread_count threads runs, and
        over how many blocks. Batches of 8+ rows split their rows
        over threads (no synchronisation); smaller batches split each step's hidden units
        (run_units: each thread keeps its slice of the weights in its own cache, one handover per
        step). LSTM without projection and RNN run run_fused (one product per step over
        [x_t, h], no hoisted projection; rows split over threads as above) when it can give each
        thread the row split would use 8+ rows: with fewer it would leave threads idle (8-15 rows
        on two threads ran on one: 1.7-2x the time of the row split on both; 64 rows on 16
        threads: 7.1 against 5.4 ms on a 16-core Xeon)."""
        work = rows * self._recurrent_bytes  # weight bytes streamed per step
        row_split = rows >= _ROW_SPLIT_MIN_ROWS and work >= _ROW_SPLIT_MIN_BYTES
        split_threads = min(thread_count, rows) if row_split else 1
        fused_threads = min(thread_count, rows // _FUSED_MIN_ROWS_PER_THREAD) if row_split else 1
        if self._fusable and rows >= _FUSED_MIN_ROWS_PER_THREAD and fused_threads >= split_threads:
            return FUSED, fused_threads
        if thread_count < 2:
            return SERIAL, 1
        if row_split:
            return ROWS, split_threads
        if self._hp >= 2 * PANEL and (
                self._step_bytes > _UNIT_SPLIT_L2_SHARE * core_l2_bytes() if steps == 1
                else steps * work >= _UNIT_SPLIT_MIN_BYTES):
            return UNITS, min(thread_count, self._hp // PANEL)
        return SERIAL, 1


# Gates laid flat (DirectionParams._whole_steps) where their columns are at most this share of
# the per-gate padded ones. One thread, T = 100, one row, per gate -> flat: LSTM H = 100 (416 of
# 512 columns) 150-152 -> 126-131 us, H = 50 (224 of 256) 40-41.5 -> 35.4-36.2, H = 200 (800 of
# 896) 376-409 -> 338-369, GRU H = 100 (320 of 384) 103-108 -> 93-97; LSTM H = 100 2 rows 14 %
# faster than the fused product, 4-7 rows and row splits within 3 % of it.
_FLAT_NARROWER = 0.9
# DirectionParams.route's kinds of call
SERIAL, ROWS, UNITS, FUSED = range(4)
_MODES = {"RNN": layout.RNN, "GRU": layout.GRU, "LSTM": layout.LSTM}
# Input plus recurrent weight bytes up to which one-row calls project their input inside the
# recurrent steps (on two threads, the blocks that do not start early). Measured on one thread
# (AMD EPYC, 1 MiB L2, 32 MiB L3 that reads at full speed up to ~8 MiB), time with / without:
# LSTM H = 64, 128 (I = 64) ~0.95; H = 256 I = 64 1.00; W + R of 2-9 MiB: LSTM H = 256 I = 256
# 0.92, H = 384 I = 256 0.94, H = 512 I = 256-512 0.93-0.95, H = 640 I = 256 0.97, GRU H = 256
# I = 256 0.90, H = 512 I = 256 0.96, H = 768 0.96; 12 MiB and more: LSTM H = 768 1.04,
# H = 1024 1.04-1.05, GRU H = 1024 1.04 (two threads: LSTM H = 1024 1.08, GRU 0.98).
_AHEAD_MAX_BYTES = 8 << 20
# LSTM (no projection) / RNN with at least this many batch rows for each thread: one product per
# step over [x_t, h] (run_fused) instead of a hoisted input projection plus the recurrent product.
_FUSED_MIN_ROWS_PER_THREAD = 8
# Row split: batches of at least this many rows (each thread then runs 4-row register tiles) and
# this many recurrent-weight bytes streamed per step (below it a step takes a few microseconds
# and waking a second thread costs more than it saves).
_ROW_SPLIT_MIN_ROWS = 8
_ROW_SPLIT_MIN_BYTES = 256 * 1024
# Unit split of a call of several steps: at least this many weight bytes over the whole call
# (steps * rows * recurrent bytes). Its parallel region costs a few microseconds once; each
# step's handover ~0.1 us.
_UNIT_SPLIT_MIN_BYTES = 1 << 20
# A one-step call (a stream's step) splits when its weights (W and R) take more than this share
# of one core's L2, which also holds the step's buffers and does not keep every line it could: a
# step that finds them in L2 runs at L2's rate on one thread, and halving that does not pay for
# the region. One thread against two (forced), Zen 5 (1 MiB L2), I = 64: LSTM H = 128 (384 KiB)
# 2.3 against 4.3 us, H = 192 (768 KiB) 4.3-4.6 against 5.4; GRU H = 256 (960 KiB) 6.3-6.4
# against 5.7-5.8, LSTM H = 256 (1.25 MiB) 9.4-9.6 against 7.0-7.2, GRU H = 320 10.8-11.3
# against 7.6-8.3. On a 16-core Xeon (2 MiB L2) the split LSTM H = 256 step took 17.8-19.5 us on
# 2-16 threads against 14.9 on one.
_UNIT_SPLIT_L2_SHARE = 7 / 8


# Kept per shape: every call of a layer asks for them again (plain Python, ~0.5 us each).
_scratch_size = functools.lru_cache(maxsize=256)(layout.scratch_size)
_workspaces = threading.local()
# Workspaces up to this size are kept for the thread's next call: a fresh one costs an allocation
# and, above glibc's mmap threshold, a page fault per 4 KiB on first touch (25 us at H256, T=100).
_WORKSPACE_KEEP_BYTES = 16 << 20


def workspace(name: str, size: int, dtype) -> np.ndarray:
    """A 64-byte aligned 1-D scratch array of `size` elements with undefined contents, reused by
    the calling thread's later calls (one per name and dtype; a call must not hold it across
    another call that asks for the same name)."""
    kept = _workspaces.__dict__  # this thread's: {(name, dtype): (buffer, its last view)}
    key = (name, dtype)
    entry = kept.get(key)
    if entry is not None and entry[1].size == size:  # the common case: the same shape again
        return entry[1]
    buf = None if entry is None else entry[0]
    if buf is None or buf.size < size:
        buf = aligned(size, dtype)
        if size * buf.itemsize > _WORKSPACE_KEEP_BYTES:
            return buf
    view = buf if buf.size == size else buf[:size]
    kept[key] = (buf, view)
    return view


def _flat(parts, dtype):
    """parts as one 64-byte aligned 1-D buffer (each part starting on a 16-element boundary) and
    their offsets. float16 is stored as its bits (uint16: numba has no float16 arrays); finite
    values beyond float16's range are refused rather than turned into infinities."""
    dtype = np.dtype(dtype)
    offsets, total = [], 0
    for part in parts:
        offsets.append(total)
        total += -(-part.size // 16) * 16
    if dtype == np.float16:
        limit = float(np.finfo(np.float16).max)
        for part in parts:
            beyond = np.isfinite(part) & (np.abs(part) > limit)
            if beyond.any():
                raise ArgumentError(f"float16 weights must lie within +-{limit:g}, got "
                                    f"{part[beyond].ravel()[0]:g}")
        buf = aligned(total, np.uint16)
        for off, part in zip(offsets, parts):
            buf[off:off + part.size] = part.ravel().astype(np.float16).view(np.uint16)
        return buf, offsets
    buf = aligned(total, dtype)
    for off, part in zip(offsets, parts):
        buf[off:off + part.size] = part.ravel()
    return buf, offsets


def aligned(size: int, dtype) -> np.ndarray:
    """A zeroed 1-D array of `size` elements whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.zeros(size + 64 // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[skip:skip + size]


def check_lengths(lengths, rows: int, steps: int) -> np.ndarray:
    """Validate per-row valid lengths (0 <= L <= T) and return them as int64."""
    arr = as_array(lengths, "lengths")
    if arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise DTypeError(f"lengths must be whole numbers, got {arr.dtype} values that are not")
    if arr.dtype.kind not in "iuf" and arr.size:
        raise DTypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (rows,):
        raise ShapeError(f"lengths must have shape ({rows},) (one per batch row), got {arr.shape}")
    # checked in their own dtype: a cast first would wrap values past int64 into range
    if rows and (arr.min() < 0 or arr.max() > steps):
        raise ArgumentError(f"lengths must lie in 0..{steps} (the sequence length), "
                            f"got min {arr.min()} max {arr.max()}")
    return arr.astype(np.int64)


@functools.lru_cache(maxsize=256)
def _full_lengths(rows: int, steps: int) -> np.ndarray:
    """Every row running all T steps: an array shared between calls that must not be written (it
    stays writeable only because a read-only array would make numba compile every kernel a
    second time)."""
    return np.full(rows, steps, dtype=np.int64)


def run_layer(stack, x, h0=None, c0=None, lengths=None):
    """Run a one-layer `Stack` (1 or 2 directions) on x (T, N, I) after checking it. Returns
    (y (T,N,D,H_out), h_n (D,N,H_out), c_n or None)."""
    first = stack.layers[0][0]
    x = as_array(x, "x")
    if x.ndim != 3:
        raise ShapeError(f"x must be (T, N, I), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise DTypeError(f"x must be a floating array, got dtype {x.dtype}")
    steps, rows, features = x.shape
    if features != first.input_size:
        raise ShapeError(f"x has {features} features, the layer expects {first.input_size}")
    if steps == 0 or rows == 0:
        raise ShapeError(f"x must have at least one step and one row, got shape {x.shape}")
    y, h_n, c_n = stack.run(canonical(x, first.dtype), h0, c0, lengths)
    return y.reshape(steps, rows, len(stack.layers[0]), -1), h_n, c_n


def canonical(x, dtype):
    """x as a C-contiguous, aligned, writeable array of dtype: x itself when it is one, else a
    copy. The kernels' compiled functions are called without type checks (DirectionParams.bind)
    for exactly such arrays (and a read-only one would need a compilation of its own)."""
    if (x.dtype is dtype or x.dtype == dtype) and x.flags.carray:  # `is`: 0.1 us less than ==
        return x
    return np.array(x, dtype=dtype, order="C")


class Stack:
    """Layers of 1 or 2 directions (DirectionParams of one mode and dtype, the input of each
    layer the output of the one before), with the calls a shape takes worked out on its first
    call: a layer call's Python path is a few dict lookups, allocations and the kernels' calls."""

    def __init__(self, layers):
        self.layers = tuple(tuple(directions) for directions in layers)
        if not self.layers or not all(self.layers):
            raise ArgumentError("a stack needs at least one layer of at least one direction")
        _check_stack(self.layers)
        self._plans = {}  # (steps, rows, threads) -> _plan()

    def __getstate__(self) -> dict:
        """Without the planned calls (compiled functions cannot be pickled): planned again."""
        return dict(self.__dict__, _plans={})

    def run(self, x, h0, c0, lengths):
        """x (T >= 1, N >= 1, I) `canonical` in the directions' dtype (checked by the caller);
        h0 / c0 (L*D, N, H_out) / (L*D, N, H) or None; lengths (N,) or None. Returns the last
        layer's y (T, N, D*H_out), h_n (L*D, N, H_out) and c_n (L*D, N, H) (None but for
        LSTM)."""
        steps, rows, _ = x.shape
        key = (steps, rows, workers())
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            plan = self._plans[key] = self._plan(*key)
        calls, size, h_shape, c_shape, y_shape, dtype, full_lengths = plan
        if lengths is None:
            lengths = full_lengths
            new_y = np.empty
        else:
            lengths = check_lengths(lengths, rows, steps)
            new_y = np.zeros  # steps past a row's length stay zero
        h_n = np.zeros(h_shape, dtype) if h0 is None else _initial_state("initial h", h0,
                                                                          h_shape, dtype)
        c_n = None
        if c_shape is not None:
            c_n = np.zeros(c_shape, dtype) if c0 is None else _initial_state("initial c", c0,
                                                                              c_shape, dtype)
        cs = self.layers[0][0].dummy_c if c_n is None else c_n
        scratch = workspace("scratch", size, dtype)
        for layer in calls:
            y = new_y(y_shape, dtype)
            for call in layer:
                call(x, lengths, h_n, cs, y, scratch)
            x = y
        return x, h_n, c_n

    def _plan(self, steps, rows, thread_count):
        """(calls: one list per layer of its directions' calls (DirectionParams.bind, or one
        call running both at once), the size of the scratch they share, shapes of h_n, c_n (None
        but for LSTM) and each layer's y, dtype, lengths of rows that run every step)."""
        first = self.layers[0][0]
        count = len(self.layers[0])
        size = 0  # batches that run only the fused product need no scratch (its xp is T*N*G*Hp)
        calls = []
        for layer, directions in enumerate(self.layers):
            slot = layer * count
            if count == 2 and directions[0].directions_concurrently(steps, rows, thread_count):
                calls.append([_both_at_once(directions, steps, rows, slot)])
                continue
            routes = [params.route(steps, rows, thread_count) for params in directions]
            calls.append([params.bind(route, rows, slot + d, d)
                          for d, (params, route) in enumerate(zip(directions, routes))])
            if any(kind != FUSED for kind, _ in routes):
                size = first.scratch_size(steps, rows)
        states = len(self.layers) * count
        c_shape = (states, rows, first.hidden_size) if first.mode == "LSTM" else None
        return (calls, size, (states, rows, first.hidden_out), c_shape,
                (steps, rows, count * first.hidden_out), first.dtype, _full_lengths(rows, steps))


def _check_stack(layers) -> None:
    """Every direction of one mode, dtype and size, each layer's input the one before's output:
    the calls index one state stack and chain outputs by these sizes, unchecked in the kernels
    (a saved ONNX plan's directions come from a file)."""
    first = layers[0][0]
    count = len(layers[0])
    for k, directions in enumerate(layers):
        if len(directions) != count or count > 2:
            raise ShapeError(f"every layer of a stack has the same 1 or 2 directions, got "
                             f"{[len(d) for d in layers]}")
        inputs = first.input_size if k == 0 else count * first.hidden_out
        for p in directions:
            if (p.mode, p.dtype, p.hidden_size, p.hidden_out, p.input_size) != \
                    (first.mode, first.dtype, first.hidden_size, first.hidden_out, inputs):
                raise ShapeError(
                    f"layer {k}'s directions must all be {first.mode} {first.dtype} with hidden "
                    f"size {first.hidden_size} (output {first.hidden_out}) and input size "
                    f"{inputs}; got {p.mode} {p.dtype} hidden {p.hidden_size} (output "
                    f"{p.hidden_out}), input {p.input_size}")


def _both_at_once(directions, steps, rows, slot):
    """A layer's call running its two directions at once, one thread each (run_directions)."""
    forward, backward = directions
    size = forward.scratch_size(steps, rows)
    dtype = forward.dtype

    def call(x, lengths, hs, cs, y, scratch):
        forward._call(engine.run_directions, (
            x, lengths, hs, cs, slot, y,
            *forward.whole_step_args(workspace("scratch0", size, dtype)),
            *backward.whole_step_args(workspace("scratch1", size, dtype))))
    return call


# How many shapes (steps, rows, threads) a stack keeps the plan of
_PLANS_KEPT = 64


def _initial_state(name, value, shape, dtype):
    return np.array(real_array(value, name, shape), dtype=dtype, copy=True, order="C")
