"""Cold start: import fastrnn + load a saved .frnn + the first call, each in a fresh process.

    python benchmarks/cold_start.py [--modes LSTM GRU] [--hidden 256] [--threads 1] [--repeats 3]
    python benchmarks/cold_start.py --warmup [--dtype float32]

Each model is measured with an empty numba cache (NUMBA_CACHE_DIR set to a new temporary folder,
so every kernel the first call needs is compiled) and then with a warm one (the same folder, filled
by the cold run). "in process" is import + load + first call as timed inside the fresh process;
"process" adds the interpreter's own start-up, as a user running a script would see it.

--warmup times `fastrnn.warmup` instead: each of its calls alone in a fresh process with an empty
cache (what each kind of call costs its first user), then the whole warm-up with an empty cache
(its worker processes compiling side by side) and again with that cache filled.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastrnn
t1 = time.perf_counter()
layer = fastrnn.load(sys.argv[1])
fastrnn.set_num_threads(int(sys.argv[2]))
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((100, 1, layer.input_size)).astype(np.float32)
layer(x)
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, first_call_s=t3 - t2, in_process_s=t3 - t0)))
"""
COLUMNS = ("import_s", "load_s", "first_call_s", "in_process_s", "process_s")


def fresh_process(model: str, threads: int, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, model, str(threads)], env=env,
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"the child process failed:\n{p.stderr}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]), process_s=wall)


def warmup_times(dtype: str) -> None:
    from fastrnn import warmup as wu
    print(f"| {dtype} warm-up | numba cache | seconds |")
    print("|---|---|---|")
    alone = 0.0
    for exercise, dt, weights in sorted(wu.plan(dtype), key=lambda t: t[0].name):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            spec = json.dumps([(exercise.name, dt, weights)])
            p = subprocess.run([sys.executable, "-m", "fastrnn.warmup", spec], env=env,
                               capture_output=True, text=True, check=False)
        if p.returncode != 0:
            sys.exit(f"the warm-up worker failed:\n{p.stderr}")
        record = next(line for line in p.stdout.splitlines() if line.startswith(wu.RECORD_PREFIX))
        seconds = json.loads(record[len(wu.RECORD_PREFIX):])["seconds"]
        alone += seconds
        print(f"| {exercise.name} alone | empty | {seconds:.1f} |", flush=True)
    print(f"| all, one after another | empty | {alone:.1f} |")
    before = os.environ.get("NUMBA_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache  # the workers inherit it
        try:
            for label in ("empty", "filled"):
                t0 = time.perf_counter()
                wu.warmup(dtype)
                print(f"| all, {wu.worker_count(None, wu.plan(dtype))} processes | {label} | "
                      f"{time.perf_counter() - t0:.1f} |", flush=True)
        finally:
            if before is None:
                del os.environ["NUMBA_CACHE_DIR"]
            else:
                os.environ["NUMBA_CACHE_DIR"] = before


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", nargs="+", default=["LSTM", "GRU"], choices=["RNN", "GRU", "LSTM"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="warm-cache runs (median reported)")
    ap.add_argument("--warmup", action="store_true", help="time fastrnn.warmup instead")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="the dtype --warmup compiles for")
    args = ap.parse_args(argv)
    if args.warmup:
        warmup_times(args.dtype)
        return

    import fastrnn
    print(f"| model | numba cache | {' | '.join(c[:-2].replace('_', ' ') for c in COLUMNS)} |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "model.frnn")
            fastrnn.save(getattr(fastrnn, mode)(args.input, args.hidden, seed=0), model)
            cache = os.path.join(tmp, "numba_cache")
            runs = {"empty": [fresh_process(model, args.threads, cache)]}
            runs["warm"] = [fresh_process(model, args.threads, cache) for _ in range(args.repeats)]
            for label, results in runs.items():
                cells = [statistics.median(r[c] for r in results) for c in COLUMNS]
                print(f"| {mode} I{args.input} H{args.hidden} t{args.threads} | {label} | "
                      + " | ".join(f"{s * 1e3:.0f} ms" for s in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
