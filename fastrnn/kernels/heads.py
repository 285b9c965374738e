"""Kernels of the task heads: a linear layer with its output activation, and token sampling."""
import numpy as np

from ._jit import helper, kernel


@helper
def _select_next(probs, order, j):
    """One step of a selection sort: move the most likely of order[j:] to position j."""
    hi = j
    for q in range(j + 1, order.shape[0]):
        if probs[order[q]] > probs[order[hi]]:
            hi = q
    tmp = order[j]
    order[j] = order[hi]
    order[hi] = tmp


@kernel
def linear_forward(x, wt, b, act, out):
    """out[n] = act(x[n] @ wt + b) for each row; wt is (I, O) C-contiguous."""
    rows, inputs = x.shape
    outs = wt.shape[1]
    for n in range(rows):
        for o in range(outs):
            out[n, o] = b[o]
        for i in range(inputs):
            xi = x[n, i]
            for o in range(outs):
                out[n, o] += xi * wt[i, o]
        if act == 1 or act == 2:            # softmax / log_softmax, max-shifted
            m = out[n, 0]
            for o in range(1, outs):
                if out[n, o] > m:
                    m = out[n, o]
            s = 0.0
            for o in range(outs):
                s += np.exp(out[n, o] - m)
            if act == 1:
                for o in range(outs):
                    out[n, o] = np.exp(out[n, o] - m) / s
            else:
                ls = m + np.log(s)
                for o in range(outs):
                    out[n, o] = out[n, o] - ls
        elif act == 3:
            for o in range(outs):
                v = out[n, o]
                if v >= 0:
                    out[n, o] = 1.0 / (1.0 + np.exp(-v))
                else:
                    e = np.exp(v)
                    out[n, o] = e / (1.0 + e)
        elif act == 4:
            for o in range(outs):
                out[n, o] = np.tanh(out[n, o])
        elif act == 5:
            for o in range(outs):
                if out[n, o] < 0:
                    out[n, o] = 0.0


@kernel
def sample(logits, temperature, top_k, top_p, u, probs, order):
    """One id from a row of logits: argmax when temperature <= 0, else a draw (uniform u in
    [0, 1)) from softmax(logits / temperature) cut to the top_k ids (top_k <= 0: all) and then to
    the smallest set of most likely ids whose mass reaches top_p of what is left.
    probs (V,) and order (V,) are scratch; O(V * kept) work, nothing allocated. A draw from
    logits that hold NaN or +inf, or are all -inf, returns -1 (their softmax has no finite
    total): the caller decides (heads.usable_logits)."""
    size = logits.shape[0]
    best = 0
    for v in range(1, size):
        if logits[v] > logits[best]:
            best = v
    if temperature <= 0.0:
        return best
    m = logits[best]
    total = 0.0
    for v in range(size):
        p = np.exp((logits[v] - m) / temperature)
        probs[v] = p
        total += p
    if not (0.0 < total < np.inf):
        return -1
    k = size if (top_k <= 0 or top_k >= size) else top_k
    if k == size and top_p >= 1.0:        # plain sampling over everything, in id order
        target = u * total
        acc = 0.0
        for v in range(size):
            acc += probs[v]
            if acc > target:
                return v
        return best
    for v in range(size):
        order[v] = v
    if k < size:                           # partial selection sort: the k most likely first
        for j in range(k):
            _select_next(probs, order, j)
        mass = 0.0
        for j in range(k):
            mass += probs[order[j]]
        kept = k
        if top_p < 1.0:
            acc = 0.0
            for j in range(k):
                acc += probs[order[j]]
                if acc >= top_p * mass:
                    kept = j + 1
                    break
    else:                                  # nucleus only: sort lazily until the mass is reached
        kept = size
        acc = 0.0
        for j in range(size):
            _select_next(probs, order, j)
            acc += probs[order[j]]
            if acc >= top_p * total:
                kept = j + 1
                break
    mass = 0.0
    for j in range(kept):
        mass += probs[order[j]]
    target = u * mass
    acc = 0.0
    for j in range(kept):
        acc += probs[order[j]]
        if acc > target:
            return order[j]
    return order[kept - 1]
