"""How many CPU threads a step runs on, chosen by measuring steps rather than assuming the cores are free.

    chooser = ThreadChooser(numba.get_num_threads())
    n = chooser.pick(key)                 # before a step; key: what makes steps comparable (decode rows)
    ...run the step on n threads...
    chooser.record(key, n, seconds)

A parallel kernel is as slow as its slowest thread. On a machine where other processes hold cores, a thread that
waits for a core stalls every other one at each of the ~200 kernel calls of a decode step: SmolLM2 decode measured
0.7 tokens/s on 2 threads against 15 on 1 thread with other jobs holding the 2 cores. So the chooser runs the steps
of a kind on the thread count that has measured fastest for it: the first steps try each count once, then every
EXPLORE-th step tries the next other count, so that it follows the load as it comes and goes. The count in use
keeps an exponential average of its step times per key; an exploring step takes over when it beats that average by
MARGIN, and a step twice as slow as the average explores at once instead of waiting for its turn. With the cores
free the exploring costs about 1/EXPLORE of the gap between the counts.
"""

EXPLORE = 32  # every EXPLORE-th step of a key runs on another thread count
MARGIN = 0.9  # a count takes over when its average step time is below MARGIN times the current one's
DECAY = 0.3  # weight of the newest step in the averages
SLOWER = 2.0  # a step this much slower than its count's average explores at once


class ThreadChooser:
    def __init__(self, max_threads: int):
        self.counts = sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)
        self.best: dict = {}  # key -> the thread count in use
        self.avg: dict = {}  # (key, threads) -> average seconds per step
        self.steps: dict = {}  # key -> steps seen
        self.soon: set = set()  # keys whose next step explores (their count just slowed down)

    def pick(self, key) -> int:
        best = self.best.setdefault(key, self.counts[0])
        k = self.steps.get(key, 0)
        self.steps[key] = k + 1
        if k < len(self.counts):  # the first steps of a kind try every count once
            return self.counts[k]
        if len(self.counts) > 1 and (k % EXPLORE == EXPLORE - 1 or key in self.soon):
            self.soon.discard(key)
            others = [c for c in self.counts if c != best]
            return others[(k // EXPLORE) % len(others)]
        return best

    def record(self, key, threads: int, seconds: float) -> None:
        best = self.best.get(key, self.counts[0])
        old = self.avg.get((key, threads))
        if threads != best or old is None:  # an exploring step: its count's last time is the one that counts now
            self.avg[key, threads] = seconds
        else:
            self.avg[key, threads] = (1 - DECAY) * old + DECAY * seconds
            if seconds > SLOWER * old:  # the load changed: look at the other counts now
                self.soon.add(key)
        theirs = self.avg.get((key, best))
        if threads != best and theirs is not None and seconds < MARGIN * theirs:
            self.best[key] = threads
