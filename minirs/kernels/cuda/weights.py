"""The weights of the CUDA backend: GGML blocks re-laid out at load time into the GPU families the GEMVs and
dequantizers read (matmul.py's module docstring has the table), kept quantized on the GPU.

    w = GMatrix.from_tensor(tensor)       # once per weight: upload, re-lay the blocks out for coalesced reads
    ex = GExperts.from_tensor(t3)         # MoE: the stacked experts (n_exp, n_out, n_in), one GMatrix of rows
"""

from dataclasses import dataclass, replace

import numpy as np

from minirs.errors import ModelError
from minirs.formats.model_file import Tensor


@dataclass
class GMatrix:
    """A weight matrix (n_out, n_in) on the GPU, quantized, in its family's layout (module docstring)."""

    qtype: str
    n_out: int
    n_in: int
    family: str  # "q45", "q8" or "float"
    q: object  # q45: (n_out, n_in/8) uint32; q8: (n_out, n_in) int8; float: (n_out, n_in) float16/float32
    d: object = None  # (n_out, n_in/g) float16 group scales
    m: object = None  # (n_out, n_in/g) float16 group offsets, or a (1, 1) dummy
    h: object = None  # (n_out, n_in/32) uint32 fifth bits (q5), or a (1, 1) dummy (q4, q8)
    off: int = 0
    g: int = 32
    has_m: bool = False
    has_h: bool = False

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.q, self.d, self.m, self.h) if a is not None)

    @classmethod
    def from_tensor(cls, t: Tensor) -> "GMatrix":
        import cupy as cp

        if len(t.shape) != 2:
            raise ValueError(f"{t.name}: a matrix needs 2 dims, got shape {t.shape}")
        n_out, n_in = t.shape
        qt = t.qtype
        dummy16 = cp.zeros((1, 1), cp.float16)
        dummy32 = cp.zeros((1, 1), cp.uint32)
        if qt in ("F16", "F32", "BF16"):
            rows = t.rows()
            if qt == "F16":
                w = cp.asarray(rows.view(np.float16))
            elif qt == "F32":
                w = cp.asarray(rows.view(np.float32))
            else:  # BF16 widened to float32 on the GPU: bf16 bits are the top half of an f32
                w = (cp.asarray(rows.view(np.uint16)).astype(cp.uint32) << 16).view(cp.float32)
            return cls(qt, n_out, n_in, "float", w)
        if qt in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
            # legacy 32-blocks, re-laid out on the GPU (fast for multi-GB files): upload raw, slice fields apart
            nb = n_in // 32
            blk = cp.asarray(t.rows()).reshape(n_out, nb, -1)
            d = cp.ascontiguousarray(blk[:, :, 0:2]).view(cp.float16).reshape(n_out, nb)
            if qt == "Q8_0":
                q = cp.ascontiguousarray(blk[:, :, 2:]).view(cp.int8).reshape(n_out, n_in)
                return cls(qt, n_out, n_in, "q8", q, d, dummy16, dummy32, 0, 32)
            has_m = qt in ("Q4_1", "Q5_1")
            p = 4 if has_m else 2
            m = cp.ascontiguousarray(blk[:, :, 2:4]).view(cp.float16).reshape(n_out, nb) if has_m else dummy16
            h = dummy32
            if qt.startswith("Q5"):
                h = cp.ascontiguousarray(blk[:, :, p:p + 4]).view(cp.uint32).reshape(n_out, nb)
                p += 4
            q = cp.ascontiguousarray(blk[:, :, p:]).view(cp.uint32).reshape(n_out, n_in // 8)
            off = 0 if has_m else (16 if qt.startswith("Q5") else 8)
            del blk
            return cls(qt, n_out, n_in, "q45", q, d, m, h, off, 32, has_m, qt.startswith("Q5"))
        # k-quants: raw blocks uploaded, re-laid out on the GPU by kquant_relayout's array code (CuPy) into the
        # same families, with f16 scales
        from minirs.kernels.kquant_relayout import RELAYOUT
        if qt not in RELAYOUT:
            raise ModelError(f"{t.name}: no CUDA matmul for type {qt}")
        family, q, d, m, h = RELAYOUT[qt](qt, n_out, n_in, cp.asarray(t.rows()), xp=cp)
        has_m = m is not None
        d = d.astype(cp.float16)
        m = m.astype(cp.float16) if has_m else dummy16
        if family == "q8":
            return cls(qt, n_out, n_in, "q8", cp.ascontiguousarray(q).view(cp.int8), d, m, dummy32, 0,
                       n_in // d.shape[1], has_m)
        q = cp.ascontiguousarray(q).view(cp.uint32)
        h = cp.ascontiguousarray(h).view(cp.uint32) if family == "q5" else dummy32
        return cls(qt, n_out, n_in, "q45", q, d, m, h, 0, 32, has_m, family == "q5")

    def _per_row(self):
        """The arrays with one row per matrix row (the (1, 1) dummies of absent fields left out)."""
        return [f for f in ("q", "d", "m", "h") if getattr(self, f) is not None and
                getattr(self, f).shape[0] == self.n_out and (f == "q" or getattr(self, "has_" + f, True))]

    def rows(self, start: int, stop: int) -> "GMatrix":
        """Rows start:stop as a GMatrix of views (no copy)."""
        sub = {f: getattr(self, f)[start:stop] for f in self._per_row()}
        return replace(self, n_out=stop - start, **sub)

    @classmethod
    def stack(cls, parts: list["GMatrix"]) -> "GMatrix | None":
        """One matrix of the parts' rows in order (q, k, v -> qkv; gate, up -> gate_up), so that one GEMV serves
        them all; None if their layouts differ (e.g. a Q6_K attn_v among Q4_K q and k)."""
        import cupy as cp
        first = parts[0]
        same = ("qtype", "n_in", "family", "off", "g", "has_m", "has_h")
        if any(getattr(p, a) != getattr(first, a) for p in parts for a in same):
            return None
        cat = {f: cp.concatenate([getattr(p, f) for p in parts]) for f in first._per_row()}
        return replace(first, n_out=sum(p.n_out for p in parts), **cat)



@dataclass
class GExperts:
    """The stacked experts (n_exp, n_out, n_in) of one MoE weight as one GMatrix of n_exp * n_out rows: expert e
    owns rows e * n_out .. (e + 1) * n_out, each row laid out as any GMatrix row (the relayout is per row)."""

    w: GMatrix
    n_exp: int
    n_out: int

    @property
    def n_in(self) -> int:
        return self.w.n_in

    @property
    def family(self) -> str:
        return self.w.family

    def expert(self, e: int) -> GMatrix:
        return self.w.rows(e * self.n_out, (e + 1) * self.n_out)

    @classmethod
    def from_tensor(cls, t: Tensor) -> "GExperts":
        if len(t.shape) != 3:
            raise ValueError(f"{t.name}: stacked experts need 3 dims (n_exp, n_out, n_in), got shape {t.shape}")
        n_exp, n_out, n_in = t.shape
        flat = Tensor(t.name, t.qtype, (n_exp * n_out, n_in), t.rows().reshape(-1))
        return cls(GMatrix.from_tensor(flat), n_exp, n_out)
