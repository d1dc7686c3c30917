"""The engine's CPU thread count (minirs/engine/threads.py): chosen by measured step time, following the load, and
never changing a result (every CPU kernel computes each row on one thread whatever the count)."""

import numba
import numpy as np

from minirs.engine.threads import EXPLORE, MAX_EXPLORE, ThreadChooser


def simulate(chooser: ThreadChooser, seconds: dict, steps: int, key="decode") -> list[int]:
    """Run `steps` steps whose time on n threads is seconds[n]; the counts used, in order."""
    used = []
    for _ in range(steps):
        n = chooser.pick(key)
        chooser.record(key, n, seconds[n])
        used.append(n)
    return used


def test_it_moves_to_one_thread_when_the_cores_are_taken_and_back_when_they_are_free():
    chooser = ThreadChooser(2, free=lambda: 2.0)
    assert chooser.counts == [2, 1]
    quiet, busy = {2: 0.010, 1: 0.016}, {2: 0.800, 1: 0.063}  # SmolLM2 decode, quiet and beside busy jobs
    n = 4 * EXPLORE
    assert simulate(chooser, quiet, n).count(1) <= n // EXPLORE + 1  # the first look and the explorations
    n = 4 * MAX_EXPLORE
    busy_run = simulate(chooser, busy, n)
    assert sum(busy[c] for c in busy_run) < 1.3 * n * busy[1]  # within 30% of 1 thread all along
    back = simulate(chooser, quiet, 2 * MAX_EXPLORE)
    assert back[MAX_EXPLORE:].count(2) >= MAX_EXPLORE - MAX_EXPLORE // EXPLORE  # the load went: 2 threads again


def test_explorations_that_lose_badly_cost_little():
    """Beside one spinning process SmolLM2 decode measured 55 tok/s on 2 threads and 133 on 1 (2.4x): the losing
    explorations must cost about EXPLORE_COST of the time, not the 4% that doubling from 32 steps costs."""
    chooser = ThreadChooser(2, free=lambda: 0.2)
    one_busy = {2: 1 / 55, 1: 1 / 133}
    n = 1000
    used = simulate(chooser, one_busy, n)
    assert used.count(2) <= 3 + n // MAX_EXPLORE  # the first look, the backing off, then one per MAX_EXPLORE
    assert sum(one_busy[c] for c in used) < 1.02 * n * one_busy[1]


def test_kinds_of_steps_are_chosen_apart():
    chooser = ThreadChooser(4, free=lambda: 4.0)
    assert chooser.counts == [4, 2, 1]
    simulate(chooser, {4: 1.0, 2: 0.5, 1: 0.8}, 8 * EXPLORE, key=("decode", 1))
    simulate(chooser, {4: 0.1, 2: 0.5, 1: 0.8}, 8 * EXPLORE, key=("prefill", 256))
    assert chooser.best == {("decode", 1): 2, ("prefill", 256): 4}


def test_the_first_guess_follows_the_load_average():
    assert ThreadChooser(2, free=lambda: 1.9).pick("prefill") == 2  # a quiet machine: all the threads
    assert ThreadChooser(2, free=lambda: -6.0).pick("prefill") == 1  # 8 jobs on 2 cores: one thread
    assert ThreadChooser(8, free=lambda: 4.2).pick("prefill") == 4
    chooser = ThreadChooser(2, free=lambda: 1.9)
    assert [chooser.pick("decode") for _ in range(2)] == [2, 1]  # the guess first, then the smaller count once


def test_more_threads_than_the_guess_wait_for_the_first_exploration():
    """A step on more threads than there are free cores can cost ten times a step (116 ms against 8 beside a
    spinning process): on a busy machine 2 threads are first tried at the first exploration, not at once."""
    chooser = ThreadChooser(2, free=lambda: -6.0)
    used = simulate(chooser, {2: 0.116, 1: 0.008}, EXPLORE + 2)
    assert used[:EXPLORE + 1] == [1] * (EXPLORE + 1) and used[EXPLORE + 1] == 2
    chooser = ThreadChooser(2, free=lambda: -6.0)
    assert simulate(chooser, {2: 0.004, 1: 0.008}, 3 * EXPLORE)[-EXPLORE:].count(2) >= EXPLORE - 1  # a wrong guess
    # mends at the first exploration (then 1 thread is looked at again now and then)


def test_one_core_has_nothing_to_choose():
    chooser = ThreadChooser(1, free=lambda: 1.0)
    assert simulate(chooser, {1: 0.1}, 3 * EXPLORE) == [1] * (3 * EXPLORE)


def test_the_thread_count_does_not_change_the_logits(smollm2_path):
    """The engine switches counts between steps, so the CPU kernels must give the same bits on any count."""
    from minirs.engine.kv_cache import KVCache
    from minirs.load import load_model
    model = load_model(smollm2_path, device="cpu")
    before = numba.get_num_threads()
    out = []
    try:
        for threads in (numba.config.NUMBA_NUM_THREADS, 1):
            numba.set_num_threads(threads)
            cache = KVCache(model.config, model.backend, 1, 64, 32)
            ids = np.arange(20, 40)
            prefill = model.forward(ids, np.zeros(20, np.int64), np.arange(20), cache, logit_rows=list(range(20)))
            decode = model.forward(np.array([7]), np.zeros(1, np.int64), np.array([20]), cache)
            out.append((np.array(prefill), np.array(decode)))
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(*out))
