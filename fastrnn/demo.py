"""``fastrnn demo``: run the shipped models (classify, generate, translate) and time them per step.

The shipped models live in ``fastrnn/models/*.frnn``; ``examples/`` holds the scripts that trained
them in PyTorch. The synthetic data sets they were trained and scored on are defined here, seeded,
so the tests can check each model still reaches the accuracy recorded in its file.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

__all__ = ["MODELS", "model_path", "load_model", "dna_dataset", "weather_corpus", "date_dataset",
           "DNA_MOTIF", "run_demo"]

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
MODELS = {"dna_motif": "dna_motif.frnn", "weather_chars": "weather_chars.frnn",
          "date_format": "date_format.frnn"}


def model_path(name: str) -> str:
    """Path of a shipped model ("dna_motif", "weather_chars", "date_format")."""
    from .errors import ArgumentError
    if name not in MODELS:
        raise ArgumentError(f"no shipped model {name!r}; shipped: {sorted(MODELS)}")
    return os.path.join(MODELS_DIR, MODELS[name])


def load_model(name: str):
    """Load a shipped model by name."""
    from .fileformat import load
    return load(model_path(name))


# ------------------------------------------------------------------------------------ data
DNA_MOTIF = "TATAAA"   # the TATA box


def dna_dataset(n: int, seed: int, min_len: int = 20, max_len: int = 60):
    """n DNA sequences over "ATCG" (lengths min_len..max_len) and labels: 1 when the sequence
    contains DNA_MOTIF, 0 when not; balanced."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        positive = i % 2 == 1
        while True:
            s = "".join(rng.choice(list("ATCG"), size=length))
            if positive:
                at = int(rng.integers(0, length - len(DNA_MOTIF) + 1))
                s = s[:at] + DNA_MOTIF + s[at + len(DNA_MOTIF):]
            if (DNA_MOTIF in s) == positive:
                break
        seqs.append(s)
        labels.append(int(positive))
    return seqs, np.array(labels, np.int64)


CITIES = ["Denver", "Boston", "Austin", "Seattle", "Chicago", "Miami", "Portland", "Phoenix",
          "Atlanta", "Dallas", "Detroit", "Houston"]
WEATHER = {"sunny": (60, 99), "cloudy": (40, 79), "rainy": (40, 69), "windy": (30, 69),
           "snowy": (5, 32), "foggy": (35, 59)}


def weather_corpus(n: int, seed: int) -> list[str]:
    """n weather-report lines such as "Denver is sunny and 75 degrees." (without newline)."""
    rng = np.random.default_rng(seed)
    kinds = list(WEATHER)
    lines = []
    for _ in range(n):
        city = CITIES[int(rng.integers(len(CITIES)))]
        kind = kinds[int(rng.integers(len(kinds)))]
        lo, hi = WEATHER[kind]
        lines.append(f"{city} is {kind} and {int(rng.integers(lo, hi + 1))} degrees.")
    return lines


def well_formed_weather(line: str) -> bool:
    """Whether a generated line (after the city) is a valid report, temperature range included."""
    import re
    m = re.fullmatch(r"(\w+) is (\w+) and (\d+) degrees\.", line)
    if not m or m.group(1) not in CITIES or m.group(2) not in WEATHER:
        return False
    lo, hi = WEATHER[m.group(2)]
    return lo <= int(m.group(3)) <= hi


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DATE_FORMATS = ("{d} {Month} {y}", "{Month} {d}, {y}", "{dd}.{mm}.{y}", "{Mon} {d} {y}",
                "{d} {mon} {y}", "{y}/{mm}/{dd}")


def date_dataset(n: int, seed: int):
    """n (human-written date, ISO date) pairs, years 1950-2049, e.g. ("5 March 2021",
    "2021-03-05")."""
    rng = np.random.default_rng(seed)
    days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    src, tgt = [], []
    for _ in range(n):
        y = int(rng.integers(1950, 2050))
        m = int(rng.integers(1, 13))
        d = int(rng.integers(1, days[m - 1] + 1))
        fmt = DATE_FORMATS[int(rng.integers(len(DATE_FORMATS)))]
        name = MONTHS[m - 1]
        src.append(fmt.format(d=d, dd=f"{d:02d}", mm=f"{m:02d}", y=y, Month=name, Mon=name[:3],
                              mon=name[:3].lower()))
        tgt.append(f"{y:04d}-{m:02d}-{d:02d}")
    return src, tgt


# ------------------------------------------------------------------------------------ scoring
def score_dna(model, n: int = 1000, seed: int = 2) -> float:
    seqs, labels = dna_dataset(n, seed)
    return float((model.predict(seqs) == labels).mean())


def score_weather(model, n: int = 200, seed: int = 2) -> float:
    """Next-character accuracy (teacher forcing) on n held-out lines, newline included."""
    lines = weather_corpus(n, seed)
    v = model.vocab
    hits = total = 0
    for line in lines:
        ids = v.encode(line + "\n")
        feats = model.input(ids[:-1])
        for r in model.rnns:
            feats, _ = r(feats)
        from .tasks.stages import apply_heads
        pred = apply_heads(model.heads, feats).argmax(axis=-1)
        hits += int((pred == ids[1:]).sum())
        total += len(ids) - 1
    return hits / total


def score_weather_lines(model, n: int = 100, seed: int = 3) -> float:
    """Share of sampled lines (temperature 0.8, prompted with a city) that are valid reports."""
    good = 0
    for i in range(n):
        city = CITIES[i % len(CITIES)]
        text = model.generate(city, 60, temperature=0.8, seed=seed + i)
        good += well_formed_weather(city + text)
    return good / n


def score_dates(model, n: int = 1000, seed: int = 2) -> float:
    """Exact-match accuracy of greedy decoding on n held-out dates."""
    src, tgt = date_dataset(n, seed)
    out = model.translate(src, max_len=12)
    return float(np.mean([a == b for a, b in zip(out, tgt)]))


SCORERS: dict[str, Callable] = {"dna_motif": score_dna, "weather_chars": score_weather,
                                "date_format": score_dates}


# ------------------------------------------------------------------------------------ demo
def _timeit(fn: Callable[[], object], repeats: int) -> float:
    fn()                                           # warm-up: compile and cache
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_demo(names=None, repeats: int = 5, out=print) -> int:
    """Run each shipped model on a few examples and print results and latency per step; a run
    that had to compile kernels says so at the end."""
    from .threads import get_num_threads
    from .validation import positive_int
    from .warmup import compiled_here
    repeats = positive_int("repeats", repeats)  # timed calls per latency: a best of none is inf
    start, compiled = time.perf_counter(), compiled_here()
    names = list(names or MODELS)
    for name in names:
        model_path(name)  # an unknown name fails before anything is printed
    out(f"fastrnn demo: shipped models in {MODELS_DIR} (threads: {get_num_threads()})")
    for name in names:
        model = load_model(name)
        info = model.info
        out("")
        out(f"== {name}: {info.get('task', '')}  [{type(model).__name__}, "
            f"{info.get('architecture', '')}]")
        out(f"   recorded accuracy: {info.get('metric', 'accuracy')} = "
            f"{info.get('accuracy', float('nan')):.4f}")
        if name == "dna_motif":
            seqs = ["ACGTTATAAAGGCTACGATCGA", "ACGTTACAAAGGCTACGATCGA",
                    "GGGCCCATATATATGCGC", "CCGATTATAAACCG"]
            probs = model(seqs)
            for s, p in zip(seqs, probs):
                label = model.labels[int(p.argmax())] if model.labels else int(p.argmax())
                out(f"   {s:<24} -> {label:<10} p={p.max():.3f}")
            x = model.vocab.encode_batch(seqs, batch_first=model.batch_first)
            steps = sum(len(s) for s in seqs)
            t = _timeit(lambda: model(*x), repeats)
            out(f"   latency: {t * 1e3:.3f} ms for {len(seqs)} sequences, "
                f"{t / steps * 1e6:.2f} us per step (batched)")
        elif name == "weather_chars":
            for i, city in enumerate(["Denver", "Boston", "Miami"]):
                text = model.generate(city, 60, temperature=0.8, top_k=5, seed=i)
                out(f"   {city!r:<10} -> {city + text!r}")
            out(f"   greedy: {'Seattle' + model.generate('Seattle', 60, greedy=True)!r}")
            steps = 40
            t = _timeit(lambda: model.generate_ids("Denver", steps, temperature=0.8, seed=0),
                        repeats)
            n = len(model.generate_ids("Denver", steps, temperature=0.8, seed=0))
            out(f"   latency: {t / max(n, 1) * 1e6:.2f} us per generated token "
                f"(stream API, batch 1, {n} tokens after a 6-character prompt)")
        elif name == "date_format":
            src = ["5 March 2021", "December 24, 1999", "07.11.1962", "Feb 29 2024",
                   "2049/01/31"]
            greedy = model.translate(src, max_len=12)
            beam = [model.translate(s, max_len=12, beam=3) for s in src]
            for s, g, b in zip(src, greedy, beam):
                out(f"   {s!r:<22} -> {g}   (beam 3: {b})")
            t = _timeit(lambda: model.translate(src[0], max_len=12), repeats)
            out(f"   latency: {t * 1e3:.3f} ms per date (greedy, encoder + 11 decoder steps), "
                f"{t / 11 * 1e6:.2f} us per decoder step")
    compiled = compiled_here() - compiled
    if compiled:
        out("")
        out(f"This run took {time.perf_counter() - start:.0f} s, most of it numba compiling "
            f"{compiled} of fastrnn's kernels on their first use on this machine.")
        out("They are cached now: the next run takes about a second. `fastrnn warmup` compiles "
            "every kernel ahead of time.")
    return 0
