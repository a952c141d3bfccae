"""How many torch threads a training process computes on, and a warning when the machine is already busy.

Measured with `python -m experiments.benchmarks contention` (2 cores): a 2-thread step beside a 1-thread neighbour
took 19x its time alone, because every OpenMP parallel region waits for the thread that has no core; one thread per
process beside the same neighbour lost 3%.
"""

from __future__ import annotations

import os
import time

from rcl.rl.args import ConfigError


def usable_core_ids() -> set[int]:
    """The cores this process may run on (`taskset`, cgroup cpusets), not the machine's."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    return len(usable_core_ids())


def training_threads(requested: int, local_processes: int, environ: dict | None = None,
                     cores: int | None = None) -> int:
    """`trainer.num_threads`, resolved: the request, else $OMP_NUM_THREADS, else this process's share of the cores it
    may run on."""
    if requested < 0:
        raise ConfigError(f"trainer.num_threads must be >= 0, got {requested}")
    if requested:
        return requested
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return int(env["OMP_NUM_THREADS"])
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, local_processes))


def cpu_jiffies(cores: set[int], stat: str) -> int | None:
    """Non-idle jiffies of `cores` in a /proc/stat text (user, nice, system, irq, softirq, steal; guest time is
    already in user); None when no line names them."""
    total, seen = 0, False
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            total += user + nice + system + irq + softirq + steal
            seen = True
    return total if seen else None


def busy_cores(window: float = 0.2) -> float | None:
    """How many of this process's cores other processes keep busy right now: their CPU time on those cores over
    `window` seconds (the cores' non-idle time in /proc/stat minus this process's own), per second. None where
    /proc/stat is missing.

    Not the load average: its 1-minute memory still counts a job that just ended (the quickstart's SFT steps before
    its RL step), and it counts processes on other cores of a large host."""
    cores = usable_core_ids()
    try:
        with open("/proc/stat") as f:
            before = cpu_jiffies(cores, f.read())
        own_before, start = sum(os.times()[:2]), time.monotonic()
        time.sleep(window)
        with open("/proc/stat") as f:
            after = cpu_jiffies(cores, f.read())
        own_after, elapsed = sum(os.times()[:2]), time.monotonic() - start
    except OSError:
        return None
    if before is None or after is None:
        return None
    others = (after - before) / os.sysconf("SC_CLK_TCK") - (own_after - own_before)
    return max(0.0, others) / elapsed


def busy_machine_warning(threads: int, busy: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other processes already keep the cores busy that this node's `threads` torch threads (all
    training processes together) are about to claim; None when they fit or when one thread per process is used.

    `busy` is how many cores other processes use (`busy_cores`, measured before this run computes anything); where
    that cannot be measured, the 1-minute load average stands in.
    """
    if threads <= 1:
        return None
    if busy is None:
        busy = busy_cores()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = usable_cores() if cores is None else cores
    if busy + threads <= cores + 0.5:
        return None
    return (f"other processes keep {busy:.1f} of this run's {cores} cores busy and it asks for {threads} torch "
            "threads: each parallel region waits for a thread that has no core (a 2-thread step beside a 1-thread "
            "neighbour measured 19x slower; `python -m experiments.benchmarks contention`). On a shared machine set "
            "`trainer.num_threads 1` (or OMP_NUM_THREADS=1).")
