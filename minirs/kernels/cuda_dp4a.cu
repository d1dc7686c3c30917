// __dp4a for Numba (which has no intrinsic of its own): r = c + sum_i a.byte[i] * b.byte[i], signed int8 bytes.
// Linked with numba.cuda.declare_device("dp4a", "int32(int32, int32, int32)", link=this file); Numba's calling
// convention returns a status and writes the result through the first pointer. LTO inlines it.
extern "C" __device__ int dp4a(int* ret, int a, int b, int c) { *ret = __dp4a(a, b, c); return 0; }
