"""`trainer.num_threads`: the request, else $OMP_NUM_THREADS, else this process's share of its cores."""

import os
import time

import pytest

from rcl.rl.loop import ConfigError, training_threads
from rcl.rl.threads import busy_cores, busy_machine_warning, cpu_jiffies


def test_an_explicit_request_wins():
    assert training_threads(3, 1, {"OMP_NUM_THREADS": "1"}, cores=16) == 3


def test_omp_num_threads_is_the_users_choice():
    assert training_threads(0, 2, {"OMP_NUM_THREADS": "5"}, cores=16) == 5


def test_the_default_shares_the_cores_between_the_computing_threads_of_the_node():
    assert training_threads(0, 1, {}, cores=2) == 2
    assert training_threads(0, 2, {}, cores=2) == 1, "two processes on two cores: one thread each, no oversubscription"
    assert training_threads(0, 4, {}, cores=2) == 1
    assert training_threads(0, 2, {"OMP_NUM_THREADS": ""}, cores=16) == 8


def test_a_negative_count_is_refused():
    with pytest.raises(ConfigError, match="num_threads must be >= 0"):
        training_threads(-1, 1, {})


def test_a_busy_machine_is_named_before_the_run_claims_its_cores():
    message = busy_machine_warning(2, busy=1.0, cores=2)
    assert message and "keep 1.0 of this run's 2 cores busy" in message and "trainer.num_threads 1" in message
    assert busy_machine_warning(2, busy=0.2, cores=2) is None, "an idle machine fits both threads"
    assert busy_machine_warning(1, busy=5.0, cores=2) is None, "one thread never waits for a sibling thread"
    assert busy_machine_warning(8, busy=4.0, cores=16) is None
    assert busy_machine_warning(2, busy=0.0, cores=1), "more threads than cores even on an idle machine"


STAT = """cpu  900 0 300 5000 10 0 0 0 0 0
cpu0 400 5 100 2000 7 1 2 3 50 0
cpu1 500 0 200 3000 3 0 0 0 0 0
intr 12345
"""


def test_cpu_jiffies_sums_the_non_idle_time_of_the_chosen_cores_only():
    assert cpu_jiffies({0}, STAT) == 400 + 5 + 100 + 1 + 2 + 3, "guest time is already in user; idle, iowait not busy"
    assert cpu_jiffies({0, 1}, STAT) == 511 + 700
    assert cpu_jiffies({7}, STAT) is None


def test_busy_cores_sees_a_neighbour_spinning_on_this_process_core():
    import multiprocessing

    assert busy_cores(0.2) is not None
    allowed = os.sched_getaffinity(0)
    core = min(allowed)
    stop = multiprocessing.Event()
    neighbour = multiprocessing.Process(target=_spin_on, args=(core, stop))
    neighbour.start()
    try:
        time.sleep(0.2)
        os.sched_setaffinity(0, {core})  # measure the neighbour's core only
        try:
            seen = busy_cores(0.5)
        finally:
            os.sched_setaffinity(0, allowed)
    finally:
        stop.set()
        neighbour.join()
    assert seen is not None and seen > 0.5, seen


def _spin_on(core, stop):
    os.sched_setaffinity(0, {core})
    while not stop.is_set():  # busy, never sleeping
        pass
