"""Temporary: eager launches of one GEMV for ncu."""
import sys
import numpy as np
import cupy as cp
from minirs.formats.model_file import Tensor
from minirs.kernels import cuda_matmul as cm
from minirs.kernels.cuda import CudaBackend
from minirs.models.synthetic import random_tensor_bytes
qt, n_out, n_in, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
be = CudaBackend()
rng = np.random.default_rng(0)
w = be.matrix(Tensor("w", qt, (n_out, n_in), random_tensor_bytes(qt, (n_out, n_in), rng).reshape(-1)))
x = cp.asarray(rng.standard_normal((n, n_in)).astype(np.float32))
for _ in range(8):
    cm.gmatmul(w, x, be.nbs, mma_min_n=m)
be.stream.synchronize()
