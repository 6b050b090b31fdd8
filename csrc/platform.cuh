// The platform layer of the top-k kernels: the few device primitives and CUDA runtime calls they use.
//
// A GPU build (nvcc) gets the real ones below. A build with -DQRERANK_EMULATE (any C++17 compiler, see
// dev/emulate.h) gets CPU stand-ins with the same names, so the same kernel source runs, slowly, on a
// machine without a GPU: that is how CI executes the kernels' index math and synchronisation.
#pragma once

#include <cstdint>

#if defined(QRERANK_EMULATE)
#include "dev/emulate.h"
#else

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <stdexcept>
#include <string>

#define QR_HD __host__ __device__

namespace qrerank::dev {

namespace wmma = nvcuda::wmma;

constexpr unsigned kFullMask = 0xffffffffu;

// Every kernel keeps one struct in dynamic shared memory, placed at its start.
__device__ __forceinline__ unsigned char* shared_memory() {
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
}

// 16-byte global -> shared copy that does not block; bytes [src_bytes, 16) of dst are zero-filled, so
// rows past the end of a matrix and columns past `d` read as zeros without a branch in the math.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  const unsigned dst_addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_addr), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace qrerank::dev

namespace qrerank::rt {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) + ": " +
                             cudaGetErrorString(status));
  }
}

inline int current_device() {
  int device = 0;
  const cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("no usable CUDA GPU (the top-k kernel needs one): ") +
                             cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
  }
  return device;
}

inline int sm_count(int device) {
  int count = 0;
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return count;
}

inline int max_shared_bytes(int device) {
  int bytes = 0;
  check(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  return bytes;
}

template <typename... Params>
void allow_shared_bytes(void (*kernel)(Params...), size_t bytes) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
        "cudaFuncSetAttribute");
}

template <typename... Params>
int blocks_per_sm(void (*kernel)(Params...), int threads, size_t shared_bytes) {
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return blocks;
}

// Launch on `stream` and surface a bad configuration now, not at the next synchronising call.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, void* stream, Args... args) {
  kernel<<<grid, block, shared_bytes, static_cast<cudaStream_t>(stream)>>>(args...);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace qrerank::rt

#endif

namespace qrerank {

QR_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
QR_HD constexpr int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }

}  // namespace qrerank
