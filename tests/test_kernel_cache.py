"""Kernels are cached on disk under a stamp of every module in fastrnn/kernels (_jit.py), not only
of their own source file as numba does: a kernel compiled before an edit of a helper module
(gemm.py, simd.py, ...) must not load after it."""
import os
import subprocess
import sys
import textwrap

from fastrnn.kernels import _jit, engine, fused, heads, layout, steps, units


def test_the_folder_digest_follows_contents_not_times(tmp_path):
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "b.py").write_text("B = 2\n")
    (tmp_path / "notes.txt").write_text("not a module\n")
    digest = _jit._folder_digest.__wrapped__
    first = digest(str(tmp_path))
    os.utime(tmp_path / "a.py", (1, 1))
    assert digest(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("changed\n")
    assert digest(str(tmp_path)) == first
    (tmp_path / "b.py").write_text("B = 3\n")
    changed = digest(str(tmp_path))
    assert changed != first
    (tmp_path / "c.py").write_text("")
    assert digest(str(tmp_path)) not in (first, changed)


def test_every_kernel_is_cached_under_the_folder_stamp():
    """Every kernel entry point and inlined helper (the helpers called from kernels are never
    cached on their own: a cached kernel carries their code)."""
    kernels = [obj for module in (engine, units, fused, layout, steps, heads)
               for obj in vars(module).values()
               if isinstance(obj, _jit.CPUDispatcher)
               and not isinstance(obj, _jit._HelperDispatcher)]
    assert {engine.run_serial, units.run_units, fused.run_fused, steps.phase_a,
            heads.linear_forward, heads.sample} <= set(kernels)
    for k in kernels:
        assert isinstance(k._cache, _jit._KERNEL_CACHE)
        own, folder = k._cache._impl.locator.get_source_stamp()
        assert folder == _jit.sources_stamp() and own


_PROBE = textwrap.dedent("""
    import sys
    from fastrnn.kernels import _jit
    _jit.KERNELS_DIR = sys.argv[1]
    sys.path.insert(0, sys.argv[1])
    from probe_kernel import twice
    twice(3)
    print(sum(twice.stats.cache_hits.values()), sum(twice.stats.cache_misses.values()))
""")


def test_editing_a_helper_module_recompiles_the_kernels(tmp_path):
    """End to end, in fresh processes with their own numba cache: a kernel loads from the cache
    until another module of its folder changes, and compiles again then."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "probe_kernel.py").write_text(
        "from fastrnn.kernels._jit import kernel\n\n@kernel\ndef twice(x):\n    return 2 * x\n")
    helper = folder / "helper.py"
    helper.write_text("FACTOR = 2\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        out = subprocess.run([sys.executable, "-c", _PROBE, str(folder)], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        return tuple(int(v) for v in out)  # (cache hits, cache misses)

    assert run() == (0, 1)
    assert run() == (1, 0)
    os.utime(helper, (1, 1))
    assert run() == (1, 0)
    helper.write_text("FACTOR = 3\n")
    assert run() == (0, 1)
    assert run() == (1, 0)


_LOAD_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from fastrnn.kernels import _jit
    _jit.KERNELS_DIR = sys.argv[1]
    sys.path.insert(0, sys.argv[1])
    from probe_parallel import doubled
    x = np.arange(1000.0)
    out = np.empty_like(x)
    doubled(x, out)
    assert (out == 2 * x).all()
    try:
        doubled(x, out[:3])
    except ValueError as e:
        message = str(e)
    registries = "numba.np.linalg" in sys.modules  # imported by numba's context refresh
    import numba
    total = numba.njit(lambda a: np.cumsum(a)[-1])(x)  # compiling still refreshes numba
    assert total == x.sum()
    stats = doubled.stats
    print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()), registries, message)
""")


def test_a_cached_kernel_loads_without_numbas_registries(tmp_path):
    """A warm start's first call loads its kernel without numba's refresh of every registry
    (_jit._load_without_refresh): in a fresh process a cached parallel kernel, with a raise in
    it, loads, runs and raises as compiled, and a later numba compile still works."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "probe_parallel.py").write_text(textwrap.dedent("""
        from numba import prange
        from fastrnn.kernels._jit import kernel

        @kernel(parallel=True)
        def doubled(x, out):
            if x.shape[0] != out.shape[0]:
                raise ValueError("x and out differ in length")
            for i in prange(x.shape[0]):
                out[i] = 2.0 * x[i]
    """))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        return subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(folder)], env=env,
                              check=True, capture_output=True, text=True).stdout.strip().split(maxsplit=3)

    assert run() == ["0", "1", "True", "x and out differ in length"]
    assert run() == ["1", "0", "False", "x and out differ in length"]
