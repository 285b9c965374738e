"""The kernel disk cache where fastrnn is deployed: folders that cannot be written, a cache filled
for another CPU, and files that a crash, a full disk or two processes saving at once left behind.
Each case runs a one-line probe kernel (compiled in under a second) in fresh processes with their
own NUMBA_CACHE_DIR, cached through fastrnn's cache class (kernels/_jit.py)."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent("""
    import builtins, errno, sys, tempfile, warnings
    import numba.core.caching as caching
    from fastrnn.kernels import _jit

    folder, read_only, arg = sys.argv[1], sys.argv[2], sys.argv[3]

    def refuse(path):  # a folder this process may read but not write (root may write anything)
        if read_only and str(path).startswith(read_only):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    caching.open = lambda f, mode="r", *a, **k: (refuse(f) if "w" in mode else None,
                                                 builtins.open(f, mode, *a, **k))[1]
    caching.tempfile = type("T", (), {"TemporaryFile": staticmethod(
        lambda dir=None, **k: (refuse(dir), tempfile.TemporaryFile(dir=dir, **k))[1])})
    _jit.KERNELS_DIR = folder
    sys.path.insert(0, folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", _jit.KernelCacheWarning)
        from probe_kernel import twice
        result = twice(eval(arg))
    stats = twice.stats
    print(repr(result), sum(stats.cache_hits.values()), sum(stats.cache_misses.values()),
          stats.cache_path)
    for w in caught:
        if issubclass(w.category, _jit.KernelCacheWarning):
            print(w.category.__name__, w.message)
""")


@pytest.fixture
def probe(tmp_path):
    """run(arg="3", read_only="", **env) -> (result, hits, misses, cache folder, warnings) of
    `twice(arg)` in a fresh process; `read_only`: a path prefix it cannot write under; an env
    value None removes that variable."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "probe_kernel.py").write_text(
        "from fastrnn.kernels._jit import kernel\n\n@kernel\ndef twice(x):\n    return 2 * x\n")
    (folder / "helper.py").write_text("FACTOR = 2\n")
    cache = tmp_path / "cache"

    def run(arg="3", read_only="", **env):
        env = {k: v for k, v in {**os.environ, "NUMBA_CACHE_DIR": str(cache), **env}.items()
               if v is not None}
        out = subprocess.run([sys.executable, "-c", _PROBE, str(folder), read_only, arg],
                             env=env, check=True, capture_output=True, text=True).stdout
        first, *warned = out.strip().splitlines()
        result, hits, misses, path = first.split(maxsplit=3)
        return result, int(hits), int(misses), path, warned

    run.folder, run.cache = folder, cache
    return run


def _cache_files(cache, suffix):
    return sorted(p for p in cache.rglob(f"probe_kernel.twice-*{suffix}"))


def test_no_writable_cache_folder_compiles_in_memory(probe, tmp_path):
    """numba raised "cannot cache function ...: no locator available" on import (of fastrnn
    itself, when its own kernels have nowhere to go: a read-only install, NUMBA_CACHE_DIR and
    HOME not writable)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (probe.folder / "__pycache__").write_text("")  # the folder beside the kernels cannot exist
    result, hits, misses, path, warned = probe(
        NUMBA_CACHE_DIR=str(blocker / "cache"), HOME=str(blocker), XDG_CACHE_HOME=None)
    assert (result, hits, misses, path) == ("6", 0, 1, "None")
    assert len(warned) == 1 and warned[0].startswith("KernelNotSavedWarning")
    assert "no folder it can write" in warned[0] and "NUMBA_CACHE_DIR" in warned[0]


def test_a_cache_folder_that_cannot_be_written_is_read(probe):
    """A cache warmed into a read-only image (or a NUMBA_CACHE_DIR of another owner) loads its
    kernels; numba skipped such a folder and compiled them again, elsewhere, in every process.
    A kernel it lacks compiles with a warning that it could not be saved; a stale one is
    skipped for a folder that can be written."""
    assert probe()[:3] == ("6", 0, 1)
    read_only = str(probe.cache)
    result, hits, misses, path, warned = probe(read_only=read_only)
    assert (result, hits, misses, warned) == ("6", 1, 0, [])
    assert path.startswith(read_only)
    result, hits, misses, path, warned = probe("1.5", read_only=read_only)
    assert (result, hits, misses) == ("3.0", 0, 1) and path.startswith(read_only)
    assert len(warned) == 1 and warned[0].startswith("KernelNotSavedWarning")
    assert "could not save a compiled kernel" in warned[0] and "Permission denied" in warned[0]
    (probe.folder / "helper.py").write_text("FACTOR = 3\n")  # the read-only cache is stale now
    result, hits, misses, path, warned = probe(read_only=read_only)
    assert (result, hits, misses, warned) == ("6", 0, 1, [])
    assert path == str(probe.folder / "__pycache__")


@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
def test_a_truncated_cache_file_is_compiled_again(probe, suffix):
    """A file cut short (a copy interrupted, a full disk) made numba raise an unpickling error
    on every call of the kernel; now it is a miss, and the save that follows repairs it."""
    assert probe()[:3] == ("6", 0, 1)
    [path] = _cache_files(probe.cache, suffix)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    result, hits, misses, _, warned = probe()
    assert (result, hits, misses) == ("6", 0, 1)
    assert warned and {w.split(" is unreadable")[0] for w in warned} == {
        f"KernelCacheWarning fastrnn: kernel cache file {path}"}  # on load (and save: an index)
    result, hits, misses, _, warned = probe()
    assert (result, hits, misses, warned) == ("6", 1, 0, [])


def test_a_data_file_saved_under_another_key_is_not_loaded(probe):
    """numba names a data file by the index it read: two processes saving other signatures of
    one kernel at once can both write data file 1 and leave one's code under the other's index
    entry. That code must not run for the other signature."""
    assert probe("3")[:3] == ("6", 0, 1)
    assert probe("1.5")[:3] == ("3.0", 0, 1)
    int_data, float_data = _cache_files(probe.cache, ".nbc")
    shutil.copyfile(float_data, int_data)  # what the race leaves
    assert probe("3")[:3] == ("6", 0, 1)
    assert probe("3")[:3] == ("6", 1, 0)
    assert probe("1.5")[:3] == ("3.0", 1, 0)


def test_a_cache_filled_for_another_cpu_is_not_loaded(probe):
    """numba keys each entry by the target CPU (name and features): code compiled for a CPU
    named in NUMBA_CPU_NAME is not run for the host, and the other way round; both are kept."""
    generic = dict(NUMBA_CPU_NAME="generic")
    assert probe(**generic)[:3] == ("6", 0, 1)
    assert probe()[:3] == ("6", 0, 1)
    assert probe(**generic)[:3] == ("6", 1, 0)
    assert len(_cache_files(probe.cache, ".nbc")) == 2
