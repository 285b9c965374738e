"""This machine's data caches, read once from Linux's sysfs (cpu0's view)."""
import functools
import glob
import os

# where sysfs cannot be read (not Linux, a sandbox): the common x86 server core of today
_FALLBACK = [dict(name="L1", size=32 << 10, private=True),
             dict(name="L2", size=1 << 20, private=True),
             dict(name="L3", size=32 << 20, private=False)]


def cache_levels() -> list[dict]:
    """Data/unified cache levels of cpu0: name, size in bytes, private (to one CPU) or shared."""
    levels = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        read = lambda f: open(os.path.join(d, f)).read().strip()  # noqa: E731
        try:
            if read("type") == "Instruction":
                continue
            size = read("size")
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
            cpus = _count_cpus(read("shared_cpu_list"))
            levels.append(dict(name=f"L{read('level')}", size=int(size.rstrip("KMG")) * mult,
                               private=cpus == 1))
        except (OSError, ValueError):
            continue
    return levels or [dict(level) for level in _FALLBACK]


@functools.cache
def core_l2_bytes() -> int:
    """The size of one core's L2 (the fallback's where sysfs names none)."""
    sizes = [level["size"] for level in cache_levels() if level["name"] == "L2"]
    return sizes[0] if sizes else _FALLBACK[1]["size"]


def _count_cpus(cpu_list: str) -> int:
    n = 0
    for part in cpu_list.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n
