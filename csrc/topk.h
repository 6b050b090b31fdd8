// Host API of qrerank's fused similarity top-k (plain C++, no CUDA headers: the pybind11 binding and the
// development harness include it). topk() launches two kernels on the given stream and returns at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace qrerank {

constexpr int kMaxK = 1024;
constexpr int kAlignment = 16;  // bytes: queries and corpus rows must start on this (16-byte async copies)

enum class DType { kFloat32, kBFloat16, kFloat16 };

// "float32", "bfloat16" or "float16"; throws std::invalid_argument otherwise.
DType parse_dtype(const std::string& name);

struct TopkShape {
  int64_t m, n, d, k;  // queries [m, d], corpus [n, d], k best per query
  DType dtype;
};

struct Plan {
  int block_m;             // queries per scan block: 16 when m <= 16, else 64
  int splits;              // corpus ranges scanned by separate blocks; each yields its own top k
  int tiles_per_split;     // 128-row corpus tiles per range
  int capacity;            // candidate keys per (query, range) buffer
  size_t shared_bytes;     // dynamic shared memory of the scan kernel
  size_t workspace_bytes;  // m * splits * capacity keys
};

// Tiling for the current CUDA device (its SM count decides `splits`). Throws as topk() does.
Plan make_plan(const TopkShape& shape);

struct TopkArgs {
  TopkShape shape;
  const void* queries;  // device pointer; row i at queries + i * query_stride elements
  int64_t query_stride;
  const void* corpus;  // device pointer; row j at corpus + j * corpus_stride elements
  int64_t corpus_stride;
  float* scores;     // [m, k] row-major, best first
  int64_t* indices;  // [m, k] row-major: corpus rows; equal scores in ascending row order
  void* workspace;   // device memory of at least make_plan(shape).workspace_bytes; no need to clear it
  size_t workspace_bytes;
  void* stream;  // cudaStream_t to launch on
};

// Validate the arguments, then launch. Throws std::invalid_argument for a bad argument (its message names
// it) and std::runtime_error for a CUDA error (no device, failed launch, an earlier asynchronous fault).
void topk(const TopkArgs& args);

}  // namespace qrerank
