"""The backend interface: every op the model (models/llama.py) and the engine (minirs/engine) call, and what a
backend can do. kernels/cpu/backend.py and kernels/cuda/backend.py implement it; nothing outside a backend asks an
object what it can do.

Shapes: n tokens in the batch, d the model width, h / hkv query / key-value heads, hd the head dim, f the FFN width,
V the vocabulary, E experts, k experts per token. Arrays are the backend's own (NumPy on the CPU, CuPy on CUDA);
activations and logits are float32, ids int64; the KV cache is (slots, hkv, L, hd) per layer in kv_dtype.

Fused forms are values, not hidden state: an op whose output feeds a matrix multiply returns an `Act`, which may
carry the form of itself that the next GEMV reads (CUDA writes the int8 or float16 form in the same kernel), and
`matmul` takes that `Act`.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

Array = Any  # numpy.ndarray on the CPU, cupy.ndarray on CUDA


class Act:
    """An activation x (n, k) float32, plus the forms of it that the op which made it wrote for the next GEMV: q, the
    int8 form (values, float32 scale and int32 sum per 32-block), or h, the float16 form; None where not written.
    A row-major reshape keeps the forms valid (they are per 32-block of each row)."""
    __slots__ = ("h", "q", "x")

    def __init__(self, x: Array, q: tuple | None = None, h: Array | None = None):
        self.x, self.q, self.h = x, q, h

    @property
    def shape(self) -> tuple:
        return self.x.shape

    def reshape(self, *shape) -> "Act":
        return Act(self.x.reshape(*shape), self.q, self.h)


def values(x) -> Array:
    """The float32 array of an Act, or the array itself."""
    return x.x if isinstance(x, Act) else x


class Stack(NamedTuple):
    """Matrices that read the same input (q, k, v or gate, up) kept apart: what stack_matrices gives where one
    stacked matrix would not be faster (the CPU) or cannot be made (parts of different layouts)."""
    parts: tuple


class LoraStack(NamedTuple):
    """The LoRA adapters of one projection (or of the parts of a stacked one: q|k|v, gate|up), A and B stacked over
    adapters and parts so that a batch mixing adapters needs one pass: rank column j belongs to one adapter and one
    part, and adds  coef[row, key[j]] * scale[j] * (A[j] . x) * B^T[j, lo[j]:hi[j]]  to the output rows lo..hi."""
    a: Array  # (R, n_in) float32: the A rows of every adapter and part
    bt: Array  # (R, n_out) float32: B transposed, zero outside each column's lo..hi
    key: Array  # (R,) int64: the column's index into a row of the coefficients (module * n_adapters + adapter)
    scale: Array  # (R,) float32: its adapter's alpha / r (alpha / sqrt(r) with rsLoRA)
    lo: Array  # (R,) int64: first output row the column writes
    hi: Array  # (R,) int64: one past the last


class Backend(Protocol):
    name: str  # "cpu", "cuda" or "twins"
    kv_dtype: type  # the KV cache's element type
    graphs: bool  # capture() works: a decode step can be recorded once and replayed
    device_sampling: bool  # argmax and sample_ids run where the logits are (else the engine samples on the host)
    numba_threads: bool  # steps run on Numba's CPU threads: the engine picks how many (engine/threads.py)
    prefill_graphs: bool  # a prefill chunk's forward may be captured like a decode step (engine/runner.py)

    # --- the engine's switches ---
    def batch_invariant(self, exact: bool) -> None:
        """exact: every row's bits independent of the other rows of its batch (else faster batched kernels)."""

    def use_in_thread(self) -> None:
        """Issue the calling thread's work where this backend's work goes (CUDA: its stream)."""

    def synchronize(self) -> None:
        """Wait until the work queued so far is done (timings)."""

    @staticmethod
    def release_memory() -> None:
        """Give the memory of arrays already dropped back to the device (a closed Runner's weights, KV cache and
        graphs; the caller lets go of every reference first, the backend's own included)."""

    # --- memory and weights ---
    def matrix(self, t) -> Any:
        """A weight matrix (n_out, n_in) from a formats.Tensor, kept quantized."""

    def vector(self, t) -> Array:
        """A 1-D weight (norm, bias) as float32."""

    def expert_matrix(self, t) -> Any:
        """An MoE layer's stacked experts (E, n_out, n_in), kept quantized."""

    def stack_matrices(self, parts: list) -> Any:
        """One weight for several projections of the same input (q|k|v, gate|up): a stacked matrix or a Stack."""

    def lora_stack(self, a: np.ndarray, bt: np.ndarray, key: np.ndarray, scale: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray, base=None) -> LoraStack:
        """A projection's stacked LoRA adapters (host arrays, see LoraStack) in this backend's memory; base is the
        weight they add to (its precision may set theirs)."""

    def array(self, a: np.ndarray) -> Array:
        """A host array copied to the backend."""

    def zeros(self, shape: tuple, dtype=np.float32) -> Array:
        """A zero-filled backend array."""

    def to_numpy(self, a: Array) -> np.ndarray:
        """A backend array on the host (the one copy a step makes)."""

    # --- the transformer's ops ---
    def embed(self, w, ids, scale: float = 1.0) -> Array:
        """x[i] = W[ids[i]] * scale: ids (n,) -> (n, d)."""

    def rmsnorm(self, x: Array, w: Array, eps: float, gemv: bool = True) -> Act:
        """x / sqrt(mean(x^2) + eps) * w per row of x (n, d) or (n, heads, hd); gemv: a GEMV reads it next."""

    def layernorm(self, x: Array, w: Array, b: Array, eps: float) -> Act:
        """(x - mean) / sqrt(var + eps) * w + b per row of x (n, d)."""

    def matmul(self, w, x, lora: tuple | None = None) -> Array:
        """y = x @ W.T: x (n, n_in) array or Act -> (n, n_out); lora = (LoraStack, coef) adds its delta."""

    def matmul_add_(self, w, x, out: Array, lora: tuple | None = None) -> None:
        """out += x @ W.T [+ the LoRA delta of lora = (LoraStack, coef)] (an output projection into the residual
        stream)."""

    def lora_add_(self, y: Array, x, lora: LoraStack, coef: Array) -> None:
        """y += the LoRA delta of x (n, n_in) for the rows' coefficients coef (n, K) (kernels/ref.py lora_delta)."""

    def add_(self, x: Array, y) -> None:
        """x += y (the residual add)."""

    def relu_(self, x: Array) -> None:
        """x = max(x, 0), in place (the X-LoRA classifier)."""

    def add_bias_(self, x: Array, b: Array) -> None:
        """x[i] += b for every row i."""

    def take_rows(self, x: Array, rows: Sequence[int]) -> Array:
        """x[rows]: the rows whose logits are wanted."""

    def softcap_(self, x: Array, cap: float) -> None:
        """x = cap * tanh(x / cap), in place."""

    def qkv_attn_inputs(self, w, h, q_dim: int, kv_dim: int, biases: tuple, norms: tuple | None, eps: float,
                        pos, inv_freq: Array, neox: bool, kc: Array, vc: Array, slots,
                        lora: tuple | None = None) -> Array:
        """q|k|v = h @ W.T (+ the LoRA delta of lora = (LoraStack, coef)) (+ biases), per-head q/k RMSNorm (norms),
        RoPE on q and k, k and v written to the caches at (slots, pos): returns q (n, h, hd). w is
        stack_matrices([Wq, Wk, Wv])."""

    def attention(self, q: Array, kc: Array, vc: Array, slots, pos, window: int, scale: float,
                  softcap: float) -> Act:
        """Causal attention of q (n, h, hd) over its slot's cached keys up to its position (the last `window` if
        > 0; scores soft-capped if softcap > 0): (n, h * hd)."""

    def gated_ffn(self, w, h, ffn_dim: int, activation: str, up_bias: Array | None = None,
                  lora: tuple | None = None) -> Act:
        """act(h @ Wgate.T) * (h @ Wup.T + up_bias): (n, f). w is stack_matrices([Wgate, Wup]); lora = (LoraStack,
        coef) adds its delta to gate|up before the activation."""

    def gated_act(self, gate: Array, up: Array, activation: str) -> Act:
        """act(gate) * up (activation "silu" or "gelu"): (n, f)."""

    def act(self, x: Array, activation: str) -> Act:
        """act(x) (the plain MLP of phi2)."""

    def topk_softmax(self, logits: Array, k: int) -> tuple[Array, Array]:
        """MoE router: logits (n, E) -> the top-k expert ids (n, k) and their softmax weights (n, k)."""

    def matmul_id(self, experts, x, ids: Array) -> Array:
        """y[t, j] = x[t] (or x[t, j]) @ W[ids[t, j]].T -> (n, k, n_out)."""

    def moe_sum(self, y: Array, weights: Array) -> Array:
        """out[t] = sum_j weights[t, j] * y[t, j] -> (n, d)."""

    def prefetch(self, mats: list) -> None:
        """A hint: the matrices that the next kernels read (CUDA warms its L2 cache while attention runs)."""

    # --- sampling where the logits are (device_sampling) ---
    def mask_logits(self, logits: Array, words: Array) -> Array:
        """In place: logits (n, V) -inf where the packed allowed-token bits words (n, W) uint32 are 0 (a grammar's
        mask, minirs.sampling.mask); returns logits."""

    def argmax(self, logits: Array) -> Array:
        """Greedy ids (n,) of logits (n, V)."""

    def sample_ids(self, logits: Array, params: Array) -> Array:
        """Ids (n,) drawn from logits (n, V) as minirs.sampling.sample_plain draws them, -1 where undecided; params
        (n, 5) as minirs.sampling.rows.pack makes them."""

    def finish_sampling(self, ids: np.ndarray, logits: Array, params: np.ndarray) -> np.ndarray:
        """The host ids with the rows sample_ids left undecided (-1) drawn on the host from their logits."""

    # --- graphs ---
    def capture(self, fn: Callable, finish: Callable, inputs: list[np.ndarray]) -> Callable:
        """A replayable step: fn(*device inputs shaped like `inputs`) -> device outputs, recorded once; calling the
        result with host arrays of those shapes runs it and returns finish(outputs, *host inputs) (host values)."""

    def known_index(self, values) -> np.ndarray:
        """An int64 index array (slots, positions) whose values the host knows and a captured step may read without
        uploading it while recording."""

    def move_prefill(self, kc: Array, vc: Array, src: int, dst: Array, n: int) -> None:
        """Rows 0..n-1 of KV slot src -> the slot named by dst (a one-element int64 array, a step's input)."""
