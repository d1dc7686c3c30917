"""Test helpers for the real models against transformers' goldens (tests/golden/make_goldens.py): the procedure
shared by the CPU tests (test_models_real.py), the GPU test (test_cuda.py) and bench/real_twin.py."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from minirs.generate import Generator

GOLDEN = Path(__file__).parent / "golden"
N_GREEDY = 24


def load_golden(name):
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"{path} is not there yet (made by tests/golden/make_goldens.py --only logits)")
    return np.load(path)


def _feed(model, ids, n_steps: int, pick):
    """The prompt's last-position logits (one prefill), then n_steps - 1 decode steps (on CUDA the captured decode
    graph, Generator.decode), each fed pick(step, the logits before it): the n_steps logits rows."""
    gen = Generator(model, ctx_len=len(ids) + n_steps + 1, max_chunk=max(len(ids), 1))
    rows = [gen.prefill(list(ids))]
    for step in range(n_steps - 1):
        rows.append(gen.decode(pick(step, rows[-1]), len(ids) + step))
    return rows


def prefill_and_greedy(model, ids, n_new):
    """Last-position logits of the prompt and n_new greedy tokens, one decode step each (n_new = 0: just the
    logits)."""
    rows = _feed(model, ids, n_new, lambda step, logits: int(np.argmax(logits)))
    return rows[0], [int(np.argmax(r)) for r in rows[:n_new]]


def teacher_forced(model, ids, tokens):
    """The logits before each of `tokens` when the model is fed the prompt and then `tokens` themselves (as
    prefill_and_greedy, but following the given tokens instead of its own argmax)."""
    return _feed(model, ids, len(tokens), lambda step, logits: int(tokens[step]))


def margin_for(logits: np.ndarray, token: int) -> float:
    """logits[token] minus the largest other logit: above 0 where greedy picks token."""
    return float(logits[token] - np.delete(logits, token).max())


def divergence(ours, want, margin):
    """(step, the reference's top-2 margin there) where greedy tokens `ours` first leave the reference's `want`,
    or None where they never do."""
    step = next((i for i, (a, b) in enumerate(zip(ours, want)) if a != b), None)
    return None if step is None else (step, float(margin[step]))


def check_greedy(results, near_tie: float, min_same: int):
    """results: (ours, golden tokens, golden margins) per prompt. Each divergence must come at a near tie (the
    reference's top-2 margin below near_tie, a flip that rounding may cause either way), and at least min_same
    prompts must give the reference's tokens exactly."""
    same = 0
    for ours, want, margin in results:
        d = divergence(ours, want, margin)
        if d is None:
            same += 1
        else:
            assert d[1] < near_tie, f"greedy diverges at step {d[0]} where the reference margin is {d[1]}"
    assert same >= min_same, f"only {same} prompts give the reference's greedy tokens"


@dataclass
class PromptRun:
    """One golden prompt through a model: what check_smollm2 asserts on and bench/real_twin.py prints."""
    n_ids: int
    err: float  # the last-position logits: max |error| / max |logit| against the reference
    toks: list  # free-running greedy tokens (none past the greedy prompts)
    want: np.ndarray  # the reference's greedy tokens
    ref_margin: np.ndarray  # the reference's top-2 margin at each of them
    rows: list = field(default_factory=list)  # teacher-forced logits before each reference token (when asked)

    @property
    def margins(self) -> list[float]:
        """Our margin for the reference's token at each teacher-forced step."""
        return [margin_for(r, int(t)) for r, t in zip(self.rows, self.want)]

    @property
    def divergence(self):
        return divergence(self.toks, self.want, self.ref_margin) if self.toks else None


def run_smollm2(model, greedy_prompts: int = 3, teacher: bool = False) -> list[PromptRun]:
    """Every golden prompt of SmolLM2-135M: its last-position logits, and on the first greedy_prompts prompts
    N_GREEDY free-running greedy tokens and (teacher) the logits teacher-forced on the reference's tokens."""
    g = load_golden("logits_smollm2.npz")
    runs = []
    for i in range(int(g["n_prompts"])):
        ids = g[f"ids_{i}"].tolist()
        last, toks = prefill_and_greedy(model, ids, N_GREEDY if i < greedy_prompts else 0)
        want = g[f"last_logits_{i}"]
        run = PromptRun(len(ids), float(np.abs(last - want).max() / np.abs(want).max()), toks, g[f"greedy_{i}"],
                        g[f"greedy_margin_{i}"])
        if toks and teacher:
            run.rows = teacher_forced(model, ids, run.want.tolist())
        runs.append(run)
    return runs


def check_smollm2(model, logit_tol: float, near_tie: float, min_same: int, greedy_prompts: int = 3,
                  margin_tol: float | None = None):
    """SmolLM2-135M against its golden (run_smollm2): each prompt's whole last-position row within logit_tol, and
    N_GREEDY greedy tokens on the first greedy_prompts prompts (check_greedy). With margin_tol, also every greedy
    step teacher-forced on the reference's tokens: our margin for the reference's token within margin_tol of the
    reference's top-2 margin (so a step the reference takes by more than margin_tol is ours too). With margin_tol
    <= near_tie that already implies check_greedy's near-tie bound (free-running greedy computes the same logits as
    the teacher-forced run up to its first divergence, where our margin is <= 0); the free-running run then adds
    min_same."""
    runs = run_smollm2(model, greedy_prompts, teacher=margin_tol is not None)
    for i, run in enumerate(runs):
        assert run.err <= logit_tol, f"prompt {i}: relative error {run.err:.2e}"
        for s, (ours, ref) in enumerate(zip(run.margins, run.ref_margin)):
            assert abs(ours - ref) <= margin_tol, (
                f"prompt {i} step {s}: our margin {ours:+.4f} for the reference's token, reference {ref:.4f}")
    check_greedy([(r.toks, r.want, r.ref_margin) for r in runs if r.toks], near_tie, min_same)
