"""Side-by-side comparison of fastrnn, ONNX Runtime and PyTorch on the cases of benchmarks/cases.py.

    python -m benchmarks.compare [--cases lstm-b1 step] [--engines fastrnn onnxruntime] [--quick]
                                 [--out benchmarks/results] [--threads 1 4 16] [--extra]

Every (case, engine) pair runs in a process of its own (thread pools of different engines fight
when they share a process), with the case's thread count pinned through each engine's API and the
usual environment variables. Each process builds the same seeded PyTorch module, sets its engine
up, warms it up, then reports the median of many timed runs and a slice of its output, which the
runner compares across engines. Every pair runs in two rounds (--rounds) and keeps the faster
median: bursts of other work on a shared machine only ever add time. Writes report.md,
results.json and (with matplotlib) chart.png. `--engines fastrnn fastrnn-f16 onnxruntime torch`
adds fastrnn with its opt-in float16 weights (weights rounded to float16: not the peers' weights,
so never a peer and not in the default set) with its own ratios and floor.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):          # run as `python benchmarks/compare.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import engines  # noqa: E402
from benchmarks.cases import (CASES, EXTRA_CASES, at_threads, by_id, floor, probe,  # noqa: E402
                             select)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
PACKAGES = ("fastrnn", "numpy", "numba", "llvmlite", "torch", "onnxruntime", "onnx")
CHECK_VALUES = 64      # output values each worker sends back for the cross-engine check
CHECK_TOL = 1e-3
SLOW_HANDOVER_NS = 200  # a round trip between two cores of one die takes ~50 ns
FULL = dict(repeats=30, min_seconds=0.5, max_seconds=3.0, warmup=0.2)
QUICK = dict(repeats=10, min_seconds=0.1, max_seconds=0.5, warmup=0.05)


def count(text: str) -> int:
    """argparse type: an integer >= 1 (rounds, repeats, thread counts)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (a time limit)."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


# ----- inside a worker process -----

def worker(case_id: str, engine: str, repeats: int, min_seconds: float, max_seconds: float,
           warmup: float) -> dict:
    """Set up, check, warm up, then the median of `repeats` runs (fewer, but at least 5, where
    they would take over max_seconds; more where they take under min_seconds)."""
    from fastrnn.bench import median_time
    bench = engines.setup(engine, by_id(case_id))
    check = bench.output()[:CHECK_VALUES]
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < warmup:
        bench.run()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    repeats = max(5, min(repeats, int(max_seconds / per_call)))
    result = dict(seconds=median_time(bench.run, repeats, min_seconds), repeats=repeats,
                  check=check.tolist())
    if engine in engines.OURS:
        import fastrnn
        result["threading_layer"] = fastrnn.threading_layer()
    return result


# ----- in the runner -----

def subprocess_json(args, threads: int, timeout: float) -> dict:
    """Run `python -m benchmarks.compare ARGS` with `threads` pinned; its last stdout line is JSON."""
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        p = subprocess.run([sys.executable, "-m", "benchmarks.compare", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or [f"exit {p.returncode}"]
        where = [line.strip() for line in lines if line.lstrip().startswith("File ")][-1:]
        return dict(error=" ".join(where + lines[-1:]))
    return json.loads(p.stdout.strip().splitlines()[-1])


def cpu_description() -> str:
    """The CPU's model name with its family and model numbers and LLVM's name for it (a VM's
    model name often leaves the generation out: "AMD EPYC" is a Zen 3, 4 or 5)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first CPU's block only
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    details = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    try:
        import llvmlite.binding as llvm
        details.append(f"LLVM {llvm.get_host_cpu_name()}")
    except ImportError:
        pass
    name = fields.get("model name", "unknown")
    return f"{name} ({', '.join(details)})" if details else name


def machine_info() -> dict:
    cpu = cpu_description()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return dict(cpu=cpu, logical_cpus=os.cpu_count(), usable_cpus=len(os.sched_getaffinity(0)),
                python=platform.python_version(), platform=platform.platform(),
                versions=versions, date=time.strftime("%Y-%m-%d %H:%M"))


def run_all(cases, engine_names, timing, timeout, rounds=1, between_rounds=None) -> list[dict]:
    """Every (case, engine) pair once per round, each round in the opposite order of the last;
    a pair keeps its fastest round's median. On a shared machine other tenants' bursts only ever
    add time, and with rounds far apart a burst rarely hits every round of one pair.
    between_rounds() (if given) runs before each round and after the last."""
    pairs = [(c, e) for c in cases for e in engine_names]
    rows = {c.id: dict(case=c, results={}) for c in cases}
    t0 = time.perf_counter()
    total = rounds * len(pairs)
    options = [f"--{name.replace('_', '-')}={value}" for name, value in timing.items()]
    order = [p for n in range(rounds) for p in (pairs if n % 2 == 0 else pairs[::-1])]
    for k, (case, engine) in enumerate(order, 1):
        if between_rounds and (k - 1) % len(pairs) == 0:
            between_rounds()
        r = subprocess_json(["--worker", case.id, engine, *options], case.threads, timeout)
        kept = rows[case.id]["results"].get(engine)
        if kept is None or "error" in kept or ("seconds" in r and r["seconds"] < kept["seconds"]):
            rows[case.id]["results"][engine] = r
        elapsed = time.perf_counter() - t0
        shown = f"error: {r['error']}" if "error" in r else fmt_time(r["seconds"])
        print(f"[{k:3d}/{total}] {elapsed:5.0f}s, ~{elapsed / k * (total - k):4.0f}s left  "
              f"{case.id:24s} {engine:12s} {shown}", file=sys.stderr, flush=True)
    if between_rounds:
        between_rounds()
    return list(rows.values())


def fmt_time(s):
    return "-" if s is None else f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def summarise(rows, machine):
    """Add floor, the best peer's time, fastrnn's ratio to it and the output check to each row
    (and the same for fastrnn's other weight storage, when it ran: `ratios`, `own_floors`);
    returns the geometric mean of fastrnn's ratios."""
    import numpy as np
    for row in rows:
        case, res = row["case"], row["results"]
        row["floor"] = floor(case, machine["probe"])
        times = {e: r["seconds"] for e, r in res.items() if "seconds" in r}
        best_peer = min((t for e, t in times.items() if engines.is_peer(e)), default=None)
        row["times"], row["best_peer"] = times, best_peer
        row["ratios"] = {e: times[e] / best_peer for e in engines.OURS
                         if e in times and best_peer}
        row["ratio"] = row["ratios"].get("fastrnn")
        row["own_floors"] = {e: floor(case, machine["probe"], size)
                             for e, size in engines.WEIGHT_ITEMSIZE.items() if e in times}
        checks = {e: np.array(r.pop("check")) for e, r in res.items() if "check" in r}
        ref = checks.get("torch", next(iter(checks.values()), None))
        row["max_diff"] = {e: float(np.abs(v - ref).max()) for e, v in checks.items()}
    return geometric_mean(r["ratio"] for r in rows)


def geometric_mean(values):
    """Of the values that are not None; None when there are none."""
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _product_rate(probe: dict) -> str:
    """The probe's multiply-add rate and where it came from (results of older runs give sgemm's)."""
    rate = f"{probe['sgemm_gflops']:.0f} GFLOP/s per core"
    sources = probe.get("sgemm_sources")
    if not sources:
        return rate + " (numpy sgemm)"
    return (rate + f" (the faster of numpy's sgemm, {sources['numpy']:.0f}, and fastrnn's tiles, "
            f"{sources['fastrnn_tiles']:.0f})")


def report(rows, engine_names, machine, geomean, notes, chart_note) -> str:
    m, pr = machine, machine["probe"]
    notes = list(notes)  # the caller's list goes into results.json without the report's own
    bw = ", ".join(f"{lv['name']} {lv['gbps']:.0f} GB/s" for lv in pr["levels"])
    caches = ", ".join(f"{lv['name']} {lv['size'] >> 10} KiB{'' if lv['private'] else ' shared'}"
                       for lv in pr["levels"] if lv["size"])
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines = [
        "# fastrnn vs ONNX Runtime and PyTorch", "",
        f"- **Machine**: {m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs; "
        f"caches {caches}", f"- **Libraries**: Python {m['python']}, {vers}; fastrnn threading "
        f"layer {m.get('threading_layer')}", f"- **Measured single-core read bandwidth**: {bw}; "
        f"float32 products {_product_rate(pr)}", *_handover_line(m), f"- **Run**: {m['date']}, "
        f"{m['timing']}; 1-minute load average {m['load_average'][0]:.1f} before, "
        f"{m['load_average'][1]:.1f} after (anything else running skews the timings)", "",
        "Median wall time of one call (T = 100, or the id's `-T`) or one streaming step (`step`, "
        "T = 1, state carried). `-bi`: bidirectional; `-p`: LSTM projection size. "
        "Ratio = fastrnn / best peer (< 1 is faster). Floor: see `benchmarks/cases.py`; "
        "% of floor = floor / time.", *_half_line(engine_names), "",
        "| case | " + " | ".join(engine_names) + " | fastrnn / best peer | floor | "
        "fastrnn % of floor | best peer % of floor |"
        + "".join(f" {e} / best peer | {e} % of its floor |" for e in _others(engine_names)),
        "|---" * (len(engine_names) + 5 + 2 * len(_others(engine_names))) + "|"]
    for row in rows:
        t, f = row["times"], row["floor"]
        pct = lambda s, f=f: "-" if s is None else f"{100 * f['seconds'] / s:.0f}%"  # noqa: E731
        cells = [fmt_time(t.get(e)) for e in engine_names]
        cells += [_ratio_cell(row["ratios"].get("fastrnn")),
                  f"{fmt_time(f['seconds'])} ({f['level']}, {f['bound']})",
                  pct(t.get("fastrnn")), pct(row["best_peer"])]
        for e in _others(engine_names):
            own = row["own_floors"].get(e)
            cells += [_ratio_cell(row["ratios"].get(e)), "-" if own is None or e not in t else
                      f"{pct(t[e], own)} of {fmt_time(own['seconds'])} ({own['level']}, "
                      f"{own['bound']})"]
        lines.append(f"| {row['case'].id} | " + " | ".join(cells) + " |")
    lines += ["", "**Geometric mean of fastrnn / best peer**: "
              + ("-" if geomean is None else f"{geomean:.2f}") + " over "
              f"{sum(1 for r in rows if r['ratio'])} cases; cases where fastrnn is slower than the "
              f"best peer: {sum(1 for r in rows if r['ratio'] and r['ratio'] > 1)}."]
    for e in _others(engine_names):
        mean = geometric_mean(r["ratios"].get(e) for r in rows)
        lines += ["", f"**Geometric mean of {e} / best peer**: "
                  + ("-" if mean is None else f"{mean:.2f}") + "."]
    for row in rows:
        for e, r in row["results"].items():
            if "error" in r:
                notes.append(f"{row['case'].id} / {e}: {r['error']}")
        bad = {e: d for e, d in row["max_diff"].items() if d > CHECK_TOL}
        if bad:
            notes.append(f"{row['case'].id}: outputs differ from torch's by {bad}")
    # Only the load before the run tells of other work: the run's own workers raise the later one.
    if m["load_average"][0] > m["usable_cpus"] / 2:
        notes.insert(0, f"**The machine was busy** (load average {m['load_average'][0]:.1f} "
                     f"on {m['usable_cpus']} CPUs before the run): these timings, the "
                     "multi-threaded ones above all, are not reliable.")
    slow = handover_note(m.get("handover_ns") or [])
    if slow:
        notes.insert(0, slow)
    worst = max((d for r in rows for e, d in r["max_diff"].items() if e not in
                 engines.WEIGHT_ITEMSIZE), default=0.0)
    if worst <= CHECK_TOL:
        notes.append(f"Every engine's output agrees with torch's to {worst:.1e} (same weights).")
    for e in _others(engine_names):
        apart = max((r["max_diff"][e] for r in rows if e in r["max_diff"]), default=None)
        if apart is not None and apart <= CHECK_TOL:
            notes.append(f"{e}'s output (its weights rounded to float16) is within {apart:.1e} "
                         "of torch's.")
    notes.append(chart_note)
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes if n]
    lines += ["", "## Reproduce", "", "```bash", ". .venv/bin/activate && pip install -e \".[bench]\"",
              "python -m benchmarks.compare            # the issue's cases (--quick for a fast pass)",
              "python -m benchmarks.compare --extra    # the shapes beyond them",
              "python -m benchmarks.compare --cases step --threads 1 2 \\",
              "    --engines fastrnn fastrnn-f16 onnxruntime torch   # float16 weights beside them",
              "python -m pytest benchmarks --benchmark-only   # the same cases under pytest-benchmark",
              "python benchmarks/cold_start.py          # import + load + first call", "```", ""]
    return "\n".join(lines)


def _others(engine_names) -> list[str]:
    """The engines that run fastrnn on weights of another storage (fastrnn-f16)."""
    return [e for e in engine_names if e in engines.WEIGHT_ITEMSIZE]


def _half_line(engine_names) -> list[str]:
    """The report's line on fastrnn-f16, when it ran."""
    if "fastrnn-f16" not in engine_names:
        return []
    return ["fastrnn-f16 is fastrnn with its opt-in float16 weights (`layer.with_weight_dtype("
            "\"float16\")`): the same weights rounded to float16 (so not exactly the peers'), "
            "float32 arithmetic; its floor counts 2 bytes a weight."]


def _ratio_cell(ratio) -> str:
    if ratio is None:
        return "-"
    return f"**{ratio:.2f}**" if ratio > 1 else f"{ratio:.2f}"


def _handover_line(machine: dict) -> list[str]:
    values = machine.get("handover_ns")
    if not values:
        return []
    shown = ", ".join("-" if v is None else f"{v:.0f}" for v in values)
    return [f"- **Two-thread handover** (a cache line passed back and forth between the two "
            f"threads of a parallel region, round trip; before each round and after the last): "
            f"{shown} ns"]


def handover_note(values) -> str | None:
    """A warning when the two threads handed work over slowly: throughout the run (over
    SLOW_HANDOVER_NS) or in some of its rounds (over twice the fastest measurement)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    fastest, slowest = min(known), max(known)
    if fastest > SLOW_HANDOVER_NS:
        return (f"**Two-thread handovers were slow throughout** ({fastest:.0f}-{slowest:.0f} ns a "
                "round trip): the two CPUs are far apart or share a core, and every two-thread "
                "batch-1 case, whose threads hand each step over, is slower for it.")
    if slowest > 2 * fastest:
        return (f"**Two-thread handovers slowed down during the run** ({fastest:.0f} to "
                f"{slowest:.0f} ns a round trip; a shared VM's host moves its vCPUs): a two-thread "
                "pair whose every round fell in a slow stretch shows it; each pair keeps its "
                "fastest round.")
    return None


def chart(rows, engine_names, path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)."
    ids = [r["case"].id for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(ids)), 8), sharex=True)
    width = 0.8 / len(engine_names)
    for k, e in enumerate(engine_names):
        xs = [i + (k - (len(engine_names) - 1) / 2) * width for i in range(len(ids))]
        rel, frac = [], []
        for r in rows:
            t, best = r["times"].get(e), r["best_peer"]
            rel.append(t / best if t and best else math.nan)
            frac.append(100 * r["floor"]["seconds"] / t if t else math.nan)
        axes[0].bar(xs, rel, width, label=e)
        axes[1].bar(xs, frac, width, label=e)
    axes[0].axhline(1, color="k", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("time / best peer's (lower is better)")
    axes[1].set_ylabel("% of the floor (higher is better)")
    axes[0].legend()
    axes[1].set_xticks(range(len(ids)), ids, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"Chart: `{path.name}`."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=[], help="case id substrings or wildcards")
    ap.add_argument("--engines", nargs="*", default=list(engines.DEFAULT_ENGINES),
                    choices=engines.ENGINES, help="default: %(default)s; fastrnn-f16 (fastrnn "
                    "with float16 weights) only when named")
    ap.add_argument("--quick", action="store_true", help="few repeats (a fast, noisier pass)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--timeout", type=positive_seconds, default=300,
                    help="seconds per (case, engine)")
    ap.add_argument("--rounds", type=count, default=None,
                    help="passes over every (case, engine); each keeps its fastest pass's median "
                         "(default 2, 1 with --quick)")
    ap.add_argument("--threads", nargs="+", type=count, metavar="N",
                    help="run the selected cases' shapes at these thread counts instead of "
                         "their own (multi-core scaling)")
    ap.add_argument("--extra", action="store_true",
                    help="the shapes beyond issue 5's grid (benchmarks/cases.extra_cases: "
                         "bidirectional, batches of 8-32, a projection, RNN, T = 1000) instead")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "ENGINE"), help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--handover", action="store_true", help=argparse.SUPPRESS)
    for name, value in FULL.items():
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                        type=count if isinstance(value, int) else seconds)
    args = ap.parse_args(argv)
    timing = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in (QUICK if args.quick else FULL).items()}
    if args.worker:
        print(json.dumps(worker(*args.worker, **timing)))
        return
    if args.probe:
        print(json.dumps(probe()))
        return
    if args.handover:
        from benchmarks.handover import round_trip_ns
        print(json.dumps(dict(round_trip_ns=round_trip_ns())))
        return

    pool = EXTRA_CASES if args.extra else CASES
    cases = select(args.cases, pool)
    if not cases:
        ap.error(f"no case matches {args.cases}; cases: {', '.join(pool)}")
    if args.threads:
        cases = at_threads(cases, args.threads)
    notes, engine_names = [], []
    for e in args.engines:
        lacking = engines.missing(e)
        if lacking:
            notes.append(f"{e} skipped: {', '.join(lacking)} not installed.")
            print(f"note: {notes[-1]}", file=sys.stderr)
        else:
            engine_names.append(e)
    if engines.missing("torch"):
        notes.append("torch is not installed: fastrnn used its own seeded weights.")
    machine = machine_info()
    print("measuring cache bandwidth and product rate ...", file=sys.stderr, flush=True)
    machine["probe"] = subprocess_json(["--probe"], 1, args.timeout)
    if "error" in machine["probe"]:
        sys.exit(f"the bandwidth probe failed: {machine['probe']['error']}")
    machine["timing"] = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in timing.items())
    load_before = os.getloadavg()[0]
    rounds = args.rounds or (1 if args.quick else 2)
    machine["timing"] += f", best of {rounds} round{'s' * (rounds > 1)}"
    # two threads' handover latency, before each round and after the last (see handover.py)
    handovers = len(os.sched_getaffinity(0)) >= 2 and any(c.threads >= 2 for c in cases)
    if handovers:
        machine["handover_ns"] = []

    def measure_handover():
        r = subprocess_json(["--handover"], 2, args.timeout)
        machine["handover_ns"].append(r.get("round_trip_ns"))
    rows = run_all(cases, engine_names, timing, args.timeout, rounds,
                   measure_handover if handovers else None)
    machine["load_average"] = [load_before, os.getloadavg()[0]]
    machine["threading_layer"] = next((r["results"]["fastrnn"].get("threading_layer") for r in rows
                                       if "fastrnn" in r["results"]), None)
    geomean = summarise(rows, machine)

    args.out.mkdir(parents=True, exist_ok=True)
    chart_note = chart(rows, engine_names, args.out / "chart.png")
    text = report(rows, engine_names, machine, geomean, notes, chart_note)
    (args.out / "report.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(dict(
        machine=machine, geomean_ratio=geomean, notes=notes,
        rows=[dict(r, case=dict(vars(r["case"]), id=r["case"].id)) for r in rows]), indent=1))
    print(text)
    print(f"wrote {args.out / 'report.md'} and results.json", file=sys.stderr)


if __name__ == "__main__":
    main()
