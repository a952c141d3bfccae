"""How many torch threads a training process computes on, and a warning when the machine is already busy.

Measured with `python -m experiments.benchmarks contention` (2 cores): a 2-thread step beside a 1-thread neighbour
took 19x its time alone, because every OpenMP parallel region waits for the thread that has no core; one thread per
process beside the same neighbour lost 3%.
"""

from __future__ import annotations

import os

from rcl.rl.args import ConfigError


def usable_cores() -> int:
    """The cores this process may run on (`taskset`, cgroup cpusets), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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


def busy_machine_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other processes already keep the cores busy that this node's `threads` torch threads (all
    training processes together) are about to claim; None when they fit or when one thread per process is used.

    `load` is the 1-minute load average (taken before this run computes anything, so it counts the others).
    """
    if threads <= 1:
        return None
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    cores = usable_cores() if cores is None else cores
    if load + threads <= cores + 0.5:
        return None
    return (f"the load average is {load:.1f} on {cores} cores and this run asks for {threads} torch threads: "
            "other processes are computing, and each parallel region waits for a thread that has no core (a "
            "2-thread step beside a 1-thread neighbour measured 19x slower; `python -m experiments.benchmarks "
            "contention`). On a shared machine set `trainer.num_threads 1` (or OMP_NUM_THREADS=1).")
