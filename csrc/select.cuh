// Exact selection of the k largest 64-bit keys (keys.cuh) by radix select: eight passes over the keys,
// each counting the next 8-bit digit of the keys that still match the prefix fixed so far in a 256-bin
// histogram, then fixing the digit where the count from the top reaches k. After eight passes the prefix
// is the k-th largest key T itself, and since keys are distinct exactly k keys are >= T.
//
// warp_select: one warp, keys in global memory (the scan kernel's per-query candidate buffers).
// block_select + sort_descending: the whole 256-thread block (the merge kernel).
#pragma once

#include <cstdint>

#include "keys.cuh"
#include "platform.cuh"

namespace qrerank {

constexpr int kThreads = 256;  // both kernels; block_select gives each thread one histogram bin
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
static_assert(kThreads == kBins, "block_select maps one thread to one histogram bin");

// The k-th largest of keys[0, count) (count >= k >= 1, keys distinct); the k largest are then moved to
// keys[0, k) in some order. `hist` is this warp's 256 counters in shared memory. All 32 lanes call it.
__device__ inline uint64_t warp_select(uint64_t* keys, int count, int k, unsigned* hist) {
  using namespace dev;
  const int lane = threadIdx.x & 31;
  uint64_t prefix = 0, mask = 0;
  unsigned need = static_cast<unsigned>(k);  // rank of the wanted key among those matching the prefix
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = lane; b < kBins; b += 32) hist[b] = 0;
    __syncwarp(kFullMask);
    for (int i = lane; i < count; i += 32) {
      const uint64_t key = keys[i];
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1u);
    }
    __syncwarp(kFullMask);
    // Lane l owns bins [8l, 8l + 8). above = keys in the bins of higher lanes (an exclusive suffix sum).
    unsigned own = 0;
    for (int b = 0; b < 8; ++b) own += hist[lane * 8 + b];
    unsigned upto = own;  // inclusive suffix sum over lanes >= lane
    for (int offset = 1; offset < 32; offset <<= 1) {
      const unsigned higher = __shfl_down_sync(kFullMask, upto, offset);
      if (lane + offset < 32) upto += higher;
    }
    const unsigned above = upto - own;
    // The ranges (above, upto] of the lanes tile (0, total] from the top, so exactly one lane holds `need`.
    const bool found = above < need && need <= upto;
    unsigned digit = 0, rest = 0;
    if (found) {
      unsigned run = above;
      for (int b = lane * 8 + 7; b >= lane * 8; --b) {
        if (run + hist[b] >= need) {
          digit = static_cast<unsigned>(b);
          rest = need - run;
          break;
        }
        run += hist[b];
      }
    }
    const int source = __ffs(__ballot_sync(kFullMask, found)) - 1;
    digit = __shfl_sync(kFullMask, digit, source);
    need = __shfl_sync(kFullMask, rest, source);
    prefix |= static_cast<uint64_t>(digit) << shift;
    mask |= static_cast<uint64_t>(0xff) << shift;
    __syncwarp(kFullMask);  // every lane has read the histogram before the next pass clears it
  }
  const uint64_t threshold = prefix;
  // Keep keys >= threshold, in place. Round r writes below base_r + 32 and reads from base_r on, and
  // each round's reads finish (ballot + syncwarp) before its writes, so no key is overwritten unread.
  int kept = 0;
  for (int base = 0; base < count; base += 32) {
    const int i = base + lane;
    const uint64_t key = i < count ? keys[i] : kEmptyKey;
    const bool keep = i < count && key >= threshold;
    const unsigned ballot = __ballot_sync(kFullMask, keep);
    __syncwarp(kFullMask);
    if (keep) keys[kept + __popc(ballot & ((1u << lane) - 1u))] = key;
    kept += __popc(ballot);
  }
  __syncwarp(kFullMask);
  return threshold;
}

struct BlockSelectShared {
  unsigned hist[kBins];
  unsigned suffix[kBins];
  unsigned digit;
  unsigned need;
};

// The k-th largest of `count` keys read through key_at(i) (count >= k >= 1, the largest k distinct).
// All kThreads threads call it; returns the same value in every thread.
template <typename KeyAt>
__device__ uint64_t block_select(KeyAt key_at, int64_t count, int k, BlockSelectShared& sh) {
  const int tid = threadIdx.x;
  uint64_t prefix = 0, mask = 0;
  unsigned need = static_cast<unsigned>(k);
  for (int shift = 56; shift >= 0; shift -= 8) {
    sh.hist[tid] = 0;
    __syncthreads();
    for (int64_t i = tid; i < count; i += kThreads) {
      const uint64_t key = key_at(i);
      if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 0xff], 1u);
    }
    __syncthreads();
    // suffix[b] = sum of hist[b..255] (Hillis-Steele scan toward lower bins).
    sh.suffix[tid] = sh.hist[tid];
    __syncthreads();
    for (int offset = 1; offset < kBins; offset <<= 1) {
      const unsigned higher = tid + offset < kBins ? sh.suffix[tid + offset] : 0u;
      __syncthreads();
      sh.suffix[tid] += higher;
      __syncthreads();
    }
    const unsigned upto = sh.suffix[tid];
    const unsigned above = upto - sh.hist[tid];
    if (above < need && need <= upto) {  // exactly one bin, as in warp_select
      sh.digit = static_cast<unsigned>(tid);
      sh.need = need - above;
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(sh.digit) << shift;
    mask |= static_cast<uint64_t>(0xff) << shift;
    need = sh.need;
    __syncthreads();  // digit and need are read by all before a later pass may write them
  }
  return prefix;
}

// Sort keys[0, width) descending in place (bitonic network; width a power of two). All threads call it.
__device__ inline void sort_descending(uint64_t* keys, int width) {
  for (int size = 2; size <= width; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < width / 2; t += kThreads) {
        const int i = 2 * t - (t & (stride - 1));  // lower element of pair t; the pair is (i, i + stride)
        const bool descending = (i & size) == 0;   // the final merge (size == width) is all descending
        const uint64_t a = keys[i], b = keys[i + stride];
        if (descending ? a < b : a > b) {
          keys[i] = b;
          keys[i + stride] = a;
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace qrerank
