"""`trainer.num_threads`: the request, else $OMP_NUM_THREADS, else this process's share of its cores."""

import pytest

from rcl.rl.loop import ConfigError, training_threads
from rcl.rl.threads import busy_machine_warning


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
    message = busy_machine_warning(2, load=1.0, cores=2)
    assert message and "load average is 1.0 on 2 cores" in message and "trainer.num_threads 1" in message
    assert busy_machine_warning(2, load=0.2, cores=2) is None, "an idle machine fits both threads"
    assert busy_machine_warning(1, load=5.0, cores=2) is None, "one thread never waits for a sibling thread"
    assert busy_machine_warning(8, load=4.0, cores=16) is None
    assert busy_machine_warning(2, load=0.0, cores=1), "more threads than cores even on an idle machine"
