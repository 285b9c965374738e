"""The `fastrnn` command line: bench, convert, inspect, run, demo, warmup."""
import argparse
import json
import os
import sys
import time
import zipfile

import numpy as np

from . import fileformat
from .errors import ArgumentError, FastRNNError, FormatError, UnsupportedError
from .layers import RecurrentLayer
from .tasks import Generator, Seq2Seq, Sequential
from .vocab import Vocabulary
from .warmup import DEFAULT_TIMEOUT as DEFAULT_WARMUP_TIMEOUT


def _cmd_bench(args) -> int:
    if args.compare:
        return _compare_with_peers(args)
    from .bench import DEFAULT_CASES, format_table, run_case
    from .threads import threading_layer
    import numba
    import platform
    cases = DEFAULT_CASES[:3] if args.quick else DEFAULT_CASES
    results = []
    for threads in args.threads:
        for mode, hidden, inp, batch in cases:
            print(f"  {mode} H={hidden} batch={batch} threads={threads} ...", file=sys.stderr,
                  flush=True)
            results.append(run_case(mode, hidden, inp, batch, steps=args.steps, threads=threads,
                                    repeats=args.repeats, weight_dtype=args.weight_dtype))
    weights = f", {args.weight_dtype} weights" if args.weight_dtype else ""
    print(f"fastrnn latency, float32{weights}, median wall time "
          f"({platform.processor() or platform.machine()}, numba {numba.__version__}, "
          f"threading layer {threading_layer()})")
    print(format_table(results))
    return 0


def _compare_with_peers(args) -> int:
    """Run the repository's side-by-side runner (benchmarks/compare.py) in a checkout."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "compare.py").is_file():
        raise FastRNNError("the side-by-side runner lives in the repository's benchmarks/ folder; "
                           "run `fastrnn bench --compare` from an editable install of a checkout")
    cmd = [sys.executable, "-m", "benchmarks.compare"] + (["--quick"] if args.quick else [])
    return subprocess.call(cmd, cwd=root)


def _cmd_convert(args) -> int:
    import converters
    src = args.src
    if src.lower().endswith(".onnx"):
        model = converters.from_onnx(src)
    else:
        model = converters.from_torch(src, nonlinearity=args.nonlinearity,
                                      batch_first=True if args.batch_first else None,
                                      prefix=args.prefix)
    fileformat.save(model, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes): {model!r}")
    if src.lower().endswith(".onnx"):  # which recurrent layers the kernels run
        calls = model.kernel_calls()
        print(f"kernel calls: {len(calls) or 'none (every node runs on numpy)'}")
        for call in calls:
            print(f"  {call}")
    return 0


def _cmd_inspect(args) -> int:
    info = fileformat.inspect(args.file)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    config = info["meta"].get("config")
    if config is not None and not isinstance(config, dict):
        raise FormatError(f"{info['path']!r}: the meta's 'config' must be a JSON object of "
                          f"settings, found {type(config).__name__} {config!r:.60}")
    print(f"file:        {info['path']} ({info['file_size']} bytes, format v{info['format_version']})")
    print(f"kind:        {info['kind']}")
    if config:
        for key, value in config.items():
            print(f"  {key + ':':<20} {value}")
    _print_task(info["meta"])
    dtypes = ", ".join(sorted({t['dtype'] for t in info["tensors"]}))
    print(f"parameters:  {info['parameter_count']}" + (f" ({dtypes})" if dtypes else ""))
    for t in info["tensors"]:
        print(f"  {t['name']:<28} {t['dtype']:<8} {t['shape']}")
    return 0


def _print_task(meta: dict) -> None:
    """A task model's stage chains, vocabularies and info, as far as its meta holds them (inspect
    reads only the header, so a malformed meta is shown, not refused)."""
    for key in ("stages", "encoder", "decoder"):
        chain = meta.get(key)
        if isinstance(chain, dict):
            parts = [chain.get("input")] + _listed(chain.get("rnns")) + _listed(chain.get("heads"))
            text = " -> ".join(_stage_text(part) for part in parts if part is not None)
            print(f"{key + ':':<12} {text}")
    for key in ("vocabulary", "vocab", "source_vocab", "target_vocab"):
        vocab = meta.get(key)
        if isinstance(vocab, dict) and isinstance(vocab.get("symbols"), list):
            unit = "characters" if vocab.get("chars") else "tokens"
            print(f"{key + ':':<12} {len(vocab['symbols'])} {unit}")
    labels = meta.get("labels")
    if isinstance(labels, list) and labels:
        shown = ", ".join(str(label) for label in labels[:8]) + (", ..." if len(labels) > 8 else "")
        print(f"{'labels:':<12} {len(labels)} ({shown})")
    info = meta.get("info")
    if isinstance(info, dict) and info:
        print("info:")
        for key, value in info.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"  {key + ':':<20} {shown}")


def _listed(value) -> list:
    return value if isinstance(value, list) else []


def _stage_text(cfg) -> str:
    """One stage's config as a constructor-like line: Embedding(44, 16), bidirectional GRU(16, 64)."""
    if not isinstance(cfg, dict):
        return f"{cfg!r:.60}"
    kind = cfg.get("type", cfg.get("mode"))
    if kind == "embedding":
        return f"Embedding({cfg.get('num_embeddings')}, {cfg.get('embedding_dim')})"
    if kind == "one_hot":
        return f"OneHot({cfg.get('size')})"
    if kind == "linear":
        activation = cfg.get("activation")
        text = f"Linear({cfg.get('in_features')}, {cfg.get('out_features')})"
        return text if activation in (None, "none") else f"{text} {activation}"
    if kind in ("RNN", "GRU", "LSTM"):
        extras = [f"{name}={cfg[name]}" for name in ("num_layers", "proj_size")
                  if isinstance(cfg.get(name), int) and cfg[name] > (1 if name == "num_layers" else 0)]
        text = f"{kind}({', '.join([str(cfg.get('input_size')), str(cfg.get('hidden_size'))] + extras)})"
        return f"bidirectional {text}" if cfg.get("bidirectional") else text
    return f"{json.dumps(cfg)[:60]}"


def _parse_feeds(texts: list[str]) -> dict:
    """The --input NAME=FILE.npy arguments as {name: array}, each name once."""
    feeds = {}
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not name:
            raise ArgumentError(f"--input expects NAME=FILE.npy, got {text!r}")
        if name in feeds:
            raise ArgumentError(f"--input {name}= is given twice")
        feeds[name] = _load_npy(text, path)
    return feeds


def _load_npy(feed: str, path: str) -> np.ndarray:
    """The array in a .npy file; a FormatError naming the --input for anything else (pickled
    objects are never loaded)."""
    try:
        value = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:  # a broken .npz is a BadZipFile
        why = ("it is not a .npy file, or it holds pickled objects, which are never loaded"
               if "pickle" in str(exc) else str(exc))
        raise FormatError(f"--input {feed}: expected an array saved with numpy.save; {why}"
                          ) from None
    if not isinstance(value, np.ndarray):
        value.close()
        raise FormatError(f"--input {feed}: expected one array saved with numpy.save, got a .npz "
                          f"archive; give each input its own .npy file")
    return value


# what to use instead of `fastrnn run` for the savable objects that do not map arrays to arrays
_NOT_RUNNABLE = {
    Generator: "it generates from a prompt: in Python, fastrnn.load(FILE).generate(text) or "
               ".generate_ids(ids)",
    Seq2Seq: "it decodes step by step: in Python, fastrnn.load(FILE).translate(texts) or "
             ".greedy_ids(ids) / .beam_search(ids)",
    Vocabulary: "it is not a model: in Python, fastrnn.load(FILE).encode(text) / .decode(ids) / "
                ".one_hot(text)",
}


def _run_model(model, feeds: dict) -> dict:
    """Run a loaded .frnn object on the feeds: {output name: array}."""
    if hasattr(model, "get_inputs"):
        names = [o.name for o in model.get_outputs()]
        return dict(zip(names, model.run(None, feeds)))
    if isinstance(model, RecurrentLayer):
        return _run_layer(model, feeds)
    if isinstance(model, Sequential):
        return _run_sequential(model, feeds)
    kind = type(model).__name__
    instead = _NOT_RUNNABLE.get(type(model), "it is not a layer or a model that maps arrays to "
                                             "arrays")
    raise UnsupportedError(f"fastrnn run runs layers, Classifier / Tagger / Sequential models "
                           f"and converted ONNX models on arrays; the file holds a {kind}, and "
                           f"{instead}")


def _run_layer(layer, feeds: dict) -> dict:
    if len(feeds) != 1:
        raise ArgumentError(f"a layer takes one input (x=FILE.npy), got {sorted(feeds)}")
    out, state = layer(next(iter(feeds.values())))
    if isinstance(state, tuple):
        return {"output": out, "h_n": state[0], "c_n": state[1]}
    return {"output": out, "h_n": state}


def _run_sequential(model, feeds: dict) -> dict:
    """A Classifier / Tagger / Sequential: one output, from ids (or features) and lengths."""
    inputs = {name: value for name, value in feeds.items() if name != "lengths"}
    if len(inputs) != 1:
        raise ArgumentError(f"a {type(model).__name__} takes one input (x=FILE.npy: token ids, "
                            f"or float features) and optionally lengths=FILE.npy, got "
                            f"{sorted(feeds)}")
    return {"output": model(next(iter(inputs.values())), lengths=feeds.get("lengths"))}


def _cmd_run(args) -> int:
    model = fileformat.load(args.file)
    outputs = _run_model(model, _parse_feeds(args.input))
    for name, value in outputs.items():
        print(f"{name}: shape {tuple(value.shape)} dtype {value.dtype}")
    if args.output:
        _write_npz(args.output, outputs)
        print(f"wrote {args.output}")
    return 0


def _write_npz(path: str, arrays: dict) -> None:
    """An .npz archive of the named arrays at exactly ``path``. np.savez would add .npz to a path
    without it, and takes the names as keyword arguments: an ONNX output named "file" would
    collide with its own argument, one named "allow_pickle" would be dropped."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.models or None, repeats=args.repeats)


def _cmd_warmup(args) -> int:
    from .warmup import plan, warmup, worker_count
    float16 = args.weight_dtype == "float16"
    tasks = plan(args.dtype, float16)
    variants = ", ".join(dict.fromkeys(d + (f" ({w} weights)" if w else "") for _, d, w in tasks))
    print(f"fastrnn warmup: {len(tasks)} calls, one per kernel and dtype ({variants}), "
          f"in {worker_count(args.jobs, tasks)} processes", flush=True)
    start = time.perf_counter()

    def show(record):
        weights = f" {record['weight_dtype']} weights" if record["weight_dtype"] else ""
        state = "compiled" if record["compiled"] else "cached already"
        print(f"  {record['name']:<13} {record['dtype']}{weights:<16} {record['seconds']:6.1f} s  "
              f"{state}", flush=True)

    records = warmup(args.dtype, float16, jobs=args.jobs, progress=show,
                     timeout=args.timeout or None)
    compiled = sum(r["compiled"] for r in records)
    print(f"{compiled} of {len(records)} compiled, the rest cached already; "
          f"{time.perf_counter() - start:.1f} s. Kernel cache: {records[0]['cache']}")
    return 0


def _count(text: str) -> int:
    """argparse type: an integer >= 1 (repeats, steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="latency of built-in model sizes (fastrnn alone)")
    bench.add_argument("--quick", action="store_true", help="three small cases only")
    bench.add_argument("--threads", type=int, nargs="+", default=[1])
    bench.add_argument("--steps", type=_count, default=100)
    bench.add_argument("--repeats", type=_count, default=20)
    bench.add_argument("--weight-dtype", choices=["float16"], default=None,
                       help="store the weight matrices in float16 (see the README)")
    bench.add_argument("--compare", action="store_true",
                       help="side by side with ONNX Runtime and PyTorch, each in its own process "
                            "(needs the bench extra and a checkout: benchmarks/compare.py)")
    bench.set_defaults(func=_cmd_bench)

    convert = sub.add_parser("convert", help="PyTorch checkpoint or ONNX model -> .frnn")
    convert.add_argument("src")
    convert.add_argument("-o", "--output", required=True)
    convert.add_argument("--prefix", default=None, help="state-dict prefix of the recurrent layer")
    convert.add_argument("--nonlinearity", choices=["tanh", "relu"], default=None)
    convert.add_argument("--batch-first", action="store_true")
    convert.set_defaults(func=_cmd_convert)

    inspect = sub.add_parser("inspect", help="describe a .frnn file")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=_cmd_inspect)

    run = sub.add_parser("run", help="run a .frnn model on .npy inputs")
    run.add_argument("file")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="x=FILE.npy for a layer or a Classifier / Tagger / Sequential (which "
                          "also take lengths=FILE.npy); an ONNX model's own input names")
    run.add_argument("-o", "--output", default=None,
                     help="write the outputs to this path, as an .npz archive")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="run the shipped models: classify, generate, translate")
    demo.add_argument("models", nargs="*", metavar="MODEL",
                      help="dna_motif, weather_chars and/or date_format (default: all)")
    demo.add_argument("--repeats", type=_count, default=5)
    demo.set_defaults(func=_cmd_demo)

    warm = sub.add_parser("warmup", help="compile every kernel into numba's cache ahead of time")
    warm.add_argument("--dtype", nargs="+", choices=["float32", "float64"], default=["float32"])
    warm.add_argument("--weight-dtype", choices=["float16"], default=None,
                      help="also the kernels of float16 weight storage (float32 models)")
    warm.add_argument("--jobs", type=int, default=None,
                      help="worker processes compiling at once (default: one per core)")
    warm.add_argument("--timeout", type=float, default=DEFAULT_WARMUP_TIMEOUT, metavar="SECONDS",
                      help="stop a worker that finishes no call for this long and fail (default: "
                           "%(default)g; 0: no limit)")
    warm.set_defaults(func=_cmd_warmup)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FastRNNError, OSError) as exc:
        print(f"fastrnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
