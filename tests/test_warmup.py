"""fastrnn.warmup: one call per kernel entry, run in worker processes that fill numba's cache."""
import sys
import time
import warnings

import numba
import pytest
from numba.core.registry import CPUDispatcher

from fastrnn import warmup as wu
from fastrnn.cli import main
from fastrnn.errors import ArgumentError, DTypeError, WarmupError
from fastrnn.kernels import _jit, engine, fused, heads, units


def _kernels(module):
    """The module's kernel entry points: dispatchers made by _jit.kernel (not helpers, not
    inlined)."""
    return {f"{module.__name__.rsplit('.', 1)[1]}.{name}" for name, obj in vars(module).items()
            if isinstance(obj, CPUDispatcher) and not isinstance(obj, _jit._HelperDispatcher)
            and obj.targetoptions.get("inline") != "always" and obj.__module__ == module.__name__}


def test_exercises_reach_every_kernel_entry():
    covered = {k for e in wu.EXERCISES for k in e.kernels}
    assert covered == set().union(*map(_kernels, (engine, units, fused, heads)))
    assert "units.run_units" in covered and "heads.sample" in covered


def test_plan_orders_longest_first_and_leaves_out_what_cannot_run():
    tasks = wu.plan(("float32", "float64"), float16_weights=True, threads=2)
    assert [t[0].cost for t in tasks] == sorted((t[0].cost for t in tasks), reverse=True)
    variants = {(d, w) for _, d, w in tasks}
    assert variants == {("float32", None), ("float64", None), ("float32", "float16")}
    # float16 storage changes only the recurrent kernels' weight arrays: no heads task
    assert len(tasks) == 3 * len(wu.EXERCISES) - 1
    one = wu.plan("float32", threads=1)  # a string is one dtype
    assert {e.name for e, _, _ in one} == {e.name for e in wu.EXERCISES if e.threads == 1}
    assert len(wu.plan(["float32", "float32"], threads=2)) == len(wu.EXERCISES)


@pytest.mark.parametrize("dtypes", [("float16",), ("int8",), ("float32", "complex64"),
                                    ("nonsense",)])
def test_plan_refuses_other_dtypes(dtypes):
    with pytest.raises(DTypeError, match="dtype must be float32 or float64"):
        wu.plan(dtypes)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_jobs_must_be_a_positive_int(jobs):
    with pytest.raises(ArgumentError, match="jobs must be an int >= 1"):
        wu.warmup(jobs=jobs)


def test_groups_balance_the_estimated_cost():
    tasks = wu.plan(("float32",), threads=2)
    groups = wu._groups(tasks, 2)
    loads = sorted(sum(e.cost for e, _, _ in g) for g in groups)
    assert sorted(id(t) for g in groups for t in g) == sorted(id(t) for t in tasks)
    assert loads[1] - loads[0] <= max(e.cost for e, _, _ in tasks)
    assert wu.worker_count(8, tasks) == len(tasks) and wu.worker_count(1, tasks) == 1


def test_an_exercise_that_misses_its_kernel_is_an_error(monkeypatch):
    serial = next(e for e in wu.EXERCISES if e.name == "serial")
    wrong = wu.Exercise("wrong", ("units.run_units",), 1, 1.0, serial.run)
    monkeypatch.setattr(wu, "EXERCISES", wu.EXERCISES + (wrong,))
    with pytest.raises(WarmupError, match="did not reach units.run_units"):
        wu._run_exercise("wrong", "float32", None)
    record = wu._run_exercise("serial", "float32", None)  # reached through compiled_for
    assert record["name"] == "serial" and record["seconds"] >= 0
    assert "compile" not in vars(units.run_units) and "compile" not in vars(engine.run_serial)


def test_warmup_runs_every_exercise_in_workers():
    """End to end: worker processes (fresh, so each check that a call reached its kernel means
    something) over the float32 kernels; in the test run they are mostly cached already."""
    seen = []
    records = wu.warmup("float32", jobs=2, progress=seen.append)
    threads = numba.config.NUMBA_NUM_THREADS
    expected = {e.name for e in wu.EXERCISES if e.threads <= threads}
    assert {r["name"] for r in records} == expected and seen == records
    assert all(r["dtype"] == "float32" and r["weight_dtype"] is None for r in records)
    assert all(isinstance(r["compiled"], bool) and r["seconds"] >= 0 and r["cache"]
               for r in records)


def test_a_failing_worker_raises_with_its_message(monkeypatch):
    serial = next(e for e in wu.EXERCISES if e.name == "serial")
    unknown = wu.Exercise("nonexistent", serial.kernels, 1, 1.0, serial.run)
    monkeypatch.setattr(wu, "plan", lambda *args: [(serial, "float32", None),
                                                    (unknown, "float32", None)])
    seen = []
    with pytest.raises(WarmupError, match="warm-up failed: .*no warm-up exercise 'nonexistent'"):
        wu.warmup("float32", jobs=1, progress=seen.append)
    assert [r["name"] for r in seen] == ["serial"]


class _FakeWorker:
    """A worker process that printed `lines` and exited with `code`."""
    def __init__(self, lines, code, stderr_text, args, stderr, **kw):
        self.stdout = iter(lines)
        self.code = code
        stderr.write(stderr_text)

    def wait(self):
        return self.code


@pytest.mark.parametrize("code, lines, error", [
    (0, ["numba says hello\n", wu.RECORD_PREFIX + '{"name": "serial"}\n'], ""),
    (0, [], "a worker exited (status 0) after 0 of its 1 calls"),
    (1, [wu.RECORD_PREFIX + '{"name": "serial"}\n'], "Boom: at the end"),
    (-9, [], "a worker exited (status -9) after 0 of its 1 calls"),  # killed after a warning
])
def test_a_worker_always_ends_its_share_of_the_queue(monkeypatch, code, lines, error):
    import queue
    monkeypatch.setattr(wu.subprocess, "Popen", lambda *a, **kw: _FakeWorker(
        lines, code, {0: "", 1: "Traceback\nBoom: at the end\n",
                      -9: "x.py:1: KernelNotSavedWarning: ...\n  warnings.warn(\n"}[code],
        *a, **kw))
    serial = next(e for e in wu.EXERCISES if e.name == "serial")
    results = queue.Queue()
    wu._drive([(serial, "float32", None)], results, None)
    items = [results.get_nowait() for _ in range(2)]
    assert results.empty()
    assert items[1] == error
    assert items[0] == ({"name": "serial"} if lines and lines[-1].startswith(wu.RECORD_PREFIX)
                        else "")


def test_a_stuck_worker_is_stopped_after_the_timeout(monkeypatch):
    """A worker that finishes no call for `timeout` seconds (a hung compile, a deadlock) is
    killed and the warm-up fails, naming the call it was on, instead of waiting for ever."""
    record = wu.RECORD_PREFIX + '{"name": "serial"}'
    monkeypatch.setattr(wu, "_worker_command", lambda spec: [
        sys.executable, "-c", f"import time; print({record!r}, flush=True); time.sleep(120)"])
    serial = next(e for e in wu.EXERCISES if e.name == "serial")
    units = next(e for e in wu.EXERCISES if e.name == "units")
    monkeypatch.setattr(wu, "plan", lambda *args: [(serial, "float32", None),
                                                    (units, "float32", None)])
    seen, start = [], time.perf_counter()
    with pytest.raises(WarmupError, match=r"finished no call for 1 s and was stopped \(on units "
                                          r"float32, after 1 of its 2 calls\)"):
        wu.warmup("float32", jobs=1, progress=seen.append, timeout=1)
    assert time.perf_counter() - start < 60 and [r["name"] for r in seen] == ["serial"]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", True])
def test_timeout_must_be_a_positive_number(timeout):
    with pytest.raises(ArgumentError, match="timeout must be a finite number > 0"):
        wu.warmup("float32", timeout=timeout)


def test_cli_warmup_prints_each_kernel(capsys):
    assert main(["warmup", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "calls, one per kernel and dtype (float32)" in out
    assert "units" in out and "Kernel cache:" in out
    assert main(["warmup", "--jobs", "0"]) == 2
    assert "jobs must be an int >= 1" in capsys.readouterr().err
    assert main(["warmup", "--timeout", "-1"]) == 2
    assert "timeout must be a finite number > 0" in capsys.readouterr().err


def test_a_kernel_compiled_but_not_saved_fails_its_exercise(monkeypatch):
    """A cache folder that cannot be written (or a full disk) leaves the kernel compiled in the
    worker only: the warm-up must not report it as done."""
    serial = next(e for e in wu.EXERCISES if e.name == "serial")

    def unsaved(dtype, weight_dtype):
        serial.run(dtype, weight_dtype)
        warnings.warn("fastrnn: could not save a compiled kernel to numba's cache in /ro",
                      _jit.KernelNotSavedWarning)
    monkeypatch.setattr(wu, "EXERCISES", wu.EXERCISES + (
        wu.Exercise("unsaved", serial.kernels, 1, 1.0, unsaved),))
    with pytest.raises(WarmupError, match=r"'unsaved' \(float32\) compiled but did not fill the "
                                          r"cache: fastrnn: could not save a compiled kernel"):
        wu._run_exercise("unsaved", "float32", None)


def test_kernels_without_a_disk_cache_fail_their_exercise(monkeypatch):
    """With no folder numba can cache in, kernels compile in memory only (_jit warns on import):
    a warm-up there fills nothing and says so."""
    from numba.core.caching import NullCache
    monkeypatch.setattr(engine.run_serial, "_cache", NullCache())
    with pytest.raises(WarmupError, match="engine.run_serial cannot be cached, numba has no "
                                          "folder it can write its cache in"):
        wu._run_exercise("serial", "float32", None)
