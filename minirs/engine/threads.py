"""How many CPU threads a step runs on, chosen by measuring steps rather than assuming the cores are free.

    chooser = ThreadChooser(numba.get_num_threads())
    n = chooser.pick(key)                 # before a step; key: what makes steps comparable (decode rows)
    ...run the step on n threads...
    chooser.record(key, n, seconds)

A parallel kernel is as slow as its slowest thread. On a machine where other processes hold cores, a thread that
waits for a core stalls every other one at each of the ~200 kernel calls of a decode step: SmolLM2 decode measured
0.8 tokens/s on 2 threads against 15.8 on 1 thread with other jobs holding the 2 cores. So the chooser runs the
steps of a kind on the thread count that has measured fastest for it. The first count is a guess from the load
average (the cores other processes leave free), which is all a command that makes one prefill step gets; the next
steps try every smaller count once, then an exploring step now and then tries the next other count, so that the
choice follows the load as it comes and goes. Larger counts than the guess wait for the first exploration: a step on
more threads than there are free cores can cost ten times a step (one 2-thread SmolLM2 decode step beside a spinning
process took 116 ms against 8 on 1 thread), one on fewer at most the ratio of the counts. The count in use keeps an
exponential average of its step times per key; an exploring step takes over when it beats that average by MARGIN.
Exploring costs what the losing count is slower, so each lost exploration at least doubles the wait before the next
(EXPLORE steps up to MAX_EXPLORE), and more where it lost badly: the wait grows until the explorations cost about
EXPLORE_COST of the steps' time (a 2-thread step 2.4x slower than 1 thread beside a spinning process waits 140
steps, not 64). A step twice as slow as the average (the load came) explores at once."""

import os

EXPLORE = 32  # steps between explorations, at first and after one wins
MAX_EXPLORE = 256  # ... doubling after each lost one up to this
EXPLORE_COST = 0.01  # the share of step time that losing explorations may cost, at most (sets the wait after one)
MARGIN = 0.9  # an exploring count takes over when its step time is below MARGIN times the average of the current
DECAY = 0.3  # weight of the newest step in the average
SLOWER = 2.0  # a step this much slower than its count's average explores at once


def free_cores() -> float:
    """Cores the other processes leave free, by the 1-minute load average (this process included, a little)."""
    return len(os.sched_getaffinity(0)) - os.getloadavg()[0]


class ThreadChooser:
    def __init__(self, max_threads: int, free=free_cores):
        self.counts = sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)
        self.free = free
        self.order: dict = {}  # key -> the counts of the first look: the guess, then the smaller ones
        self.best: dict = {}  # key -> the thread count in use
        self.avg: dict = {}  # key -> average seconds per step of the count in use
        self.steps: dict = {}  # key -> steps seen
        self.wait: dict = {}  # key -> steps between explorations now
        self.next: dict = {}  # key -> the step that explores next
        self.explored: dict = {}  # key -> how many explorations so far (which other count is next)

    def pick(self, key) -> int:
        if key not in self.order:
            guess = next((c for c in self.counts if c <= self.free() + 0.5), self.counts[-1])
            self.order[key] = [guess] + [c for c in self.counts if c < guess]
            self.best[key] = guess
        best = self.best[key]
        k = self.steps.get(key, 0)
        self.steps[key] = k + 1
        if k < len(self.order[key]):  # the first steps of a kind try the guess and every smaller count once
            return self.order[key][k]
        if len(self.counts) == 1 or k < self.next.setdefault(key, k + EXPLORE):
            return best
        i = self.explored.get(key, 0)
        self.explored[key] = i + 1
        others = [c for c in self.counts if c != best]
        return others[i % len(others)]

    def record(self, key, threads: int, seconds: float) -> None:
        best = self.best.setdefault(key, self.counts[0])
        k = self.steps.get(key, 0)
        avg = self.avg.get(key)
        if threads == best:
            self.avg[key] = seconds if avg is None else (1 - DECAY) * avg + DECAY * seconds
            if avg is not None and seconds > SLOWER * avg and best != self.counts[-1]:
                self.next[key] = k  # the load came: look at fewer threads now
            return
        wait = self.wait.get(key, EXPLORE)
        if avg is None or seconds < MARGIN * avg:
            self.best[key], self.avg[key], wait = threads, seconds, EXPLORE
        elif k > len(self.order.get(key, ())):  # a lost exploration (not the first look): wait longer for the next
            lost = seconds / avg - 1  # in steps of the current count
            wait = min(max(2 * wait, int(lost / EXPLORE_COST)), MAX_EXPLORE)
        self.wait[key] = wait
        self.next[key] = k + wait
