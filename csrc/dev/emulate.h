// CPU emulation of the CUDA subset that qrerank's top-k kernels use (build with -DQRERANK_EMULATE and any
// C++17 compiler; platform.cuh includes this instead of the CUDA headers). A development and CI tool.
//
// Blocks run as fibers (fibers.h) that switch at barriers, warp collectives and, at random, atomics, in a
// new random order every round, so a missing barrier shows up as a wrong result instead of passing
// thanks to a fixed order. Also modelled: cp.async copies land only when the issuing thread waits for
// their group (reading a stage too early sees stale data); shared memory starts as 0xA5 garbage; a
// barrier that some thread never reaches is reported as a deadlock; WMMA alignment rules are checked.
// WMMA fragments hold whole 16x16 tiles (the API's meaning, not the hardware register layout) and lane 0
// does a warp's tile math.
#pragma once

#include <cuda_bf16.h>  // with a host compiler these give the types, host conversions and __device__ & co.
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "fibers.h"

#define __launch_bounds__(...)
#define QR_HD

#define threadIdx (::qrerank::emu::thread_index())
#define blockIdx (::qrerank::emu::active()->block_idx)
#define blockDim (::qrerank::emu::active()->block_dim)
#define gridDim (::qrerank::emu::active()->grid_dim)

inline void __syncthreads() { qrerank::emu::block_barrier(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  qrerank::emu::require_full(mask);
  qrerank::emu::warp_barrier();
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int /*width*/ = 32) {
  qrerank::emu::require_full(mask);
  return qrerank::emu::exchange(value, static_cast<unsigned>(source) & 31u);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int /*width*/ = 32) {
  qrerank::emu::require_full(mask);
  const unsigned lane = qrerank::emu::self().tid & 31u;
  return qrerank::emu::exchange(value, lane + delta < 32 ? lane + delta : lane);  // out of range: own value
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  qrerank::emu::require_full(mask);
  qrerank::emu::Block& b = *qrerank::emu::active();
  const unsigned warp = qrerank::emu::self().tid / 32;
  b.exchange[qrerank::emu::self().tid] = predicate != 0;
  qrerank::emu::warp_barrier();
  unsigned bits = 0;
  for (unsigned lane = 0; lane < 32; ++lane) bits |= static_cast<unsigned>(b.exchange[warp * 32 + lane] != 0) << lane;
  qrerank::emu::warp_barrier();
  return bits;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// Fibers switch only at barriers and here, so the read-modify-write itself is atomic. Yielding after
// half of all atomics lets other threads run between a slot reservation and the writes into it, which
// is where a missing barrier around shared counters would show.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  if (qrerank::emu::rng()() & 1u) qrerank::emu::yield();
  return old;
}

namespace qrerank::dev {

constexpr unsigned kFullMask = 0xffffffffu;

inline unsigned char* shared_memory() { return emu::active()->shared; }

inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) emu::fail("cp.async destination not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) emu::fail("cp.async src-size outside [0, 16]");
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0) emu::fail("cp.async source not 16-byte aligned");
  emu::self().pending.push_back({dst, src, src_bytes});
}

inline void cp_async_commit() {
  emu::Fiber& f = emu::self();
  f.in_flight.push_back(std::move(f.pending));
  f.pending.clear();
}

template <int N>
void cp_async_wait() {
  emu::Fiber& f = emu::self();
  while (f.in_flight.size() > static_cast<size_t>(N)) {
    for (const emu::Copy& c : f.in_flight.front()) {
      std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
      std::memset(static_cast<char*>(c.dst) + c.bytes, 0, static_cast<size_t>(16 - c.bytes));
    }
    f.in_flight.pop_front();
  }
}

namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// The whole tile in the orientation of the matrix it stands for: A [m][k], B [k][n], C [m][n].
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only m16n16k16 is emulated");
  float v[16][16];
};

inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

inline bool lane0() { return (emu::self().tid & 31u) == 0; }

template <typename T>
void check_operand(const T* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail("wmma pointer not 256-bit aligned");
  if ((ldm * sizeof(T)) % 16 != 0) emu::fail("wmma ldm not a multiple of 16 bytes");
}

template <typename F>
void fill_fragment(F& f, float value) {
  for (auto& row : f.v)
    for (float& x : row) x = value;
}

template <typename T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  check_operand(p, ldm);
  if (!lane0()) return;
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) f.v[i][k] = to_float(p[i * ldm + k]);
}

template <typename T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
  check_operand(p, ldm);
  if (!lane0()) return;
  for (int j = 0; j < 16; ++j)
    for (int k = 0; k < 16; ++k) f.v[k][j] = to_float(p[j * ldm + k]);
}

template <typename T>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
              const fragment<matrix_b, 16, 16, 16, T, col_major>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!lane0()) return;
  float out[16][16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float sum = c.v[i][j];
      for (int k = 0; k < 16; ++k) sum = std::fma(a.v[i][k], b.v[k][j], sum);
      out[i][j] = sum;
    }
  std::memcpy(d.v, out, sizeof out);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  check_operand(p, ldm);
  if (layout != mem_row_major) emu::fail("only row-major accumulator stores are emulated");
  if (!lane0()) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) p[i * ldm + j] = f.v[i][j];
}

}  // namespace wmma
}  // namespace qrerank::dev

namespace qrerank::rt {

constexpr int kEmulatedSms = 3;  // a small GPU: even modest corpora are split across several ranges

inline int current_device() { return 0; }
inline int sm_count(int) { return kEmulatedSms; }
inline int max_shared_bytes(int) { return static_cast<int>(emu::kMaxSharedBytes); }

template <typename... Params>
void allow_shared_bytes(void (*)(Params...), size_t) {}

template <typename... Params>
int blocks_per_sm(void (*)(Params...), int, size_t) {
  return 2;
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, void* /*stream*/, Args... args) {
  emu::launch_kernel(kernel, grid, block, shared_bytes, args...);
}

}  // namespace qrerank::rt
