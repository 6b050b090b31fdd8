// qrerank's fused similarity top-k: argument checks, the launch plan, and pass 2 (the merge kernel).
// Pass 1 (scan.cuh) leaves, per query and corpus range, that range's k best keys in the workspace;
// the merge kernel, one block per query, selects the k best of all ranges and writes them sorted.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "keys.cuh"
#include "platform.cuh"
#include "scan.cuh"
#include "select.cuh"
#include "topk.h"

namespace qrerank {
namespace {

constexpr int kMinTilesPerSplit = 4;  // below this a range's fixed costs (prologue, final select) dominate
constexpr int64_t kMaxRows = (int64_t{1} << 31) - 1;  // keys hold ~row in 32 bits with the top bit set

struct MergeParams {
  const uint64_t* buffers;  // the scan's [m][splits][capacity]; the first k of each are valid
  int splits, capacity, k;
  float* scores;
  int64_t* indices;
};

struct MergeShared {
  BlockSelectShared select;
  unsigned count;
  uint64_t best[kMaxK];
};

__global__ void __launch_bounds__(kThreads) merge_kernel(MergeParams p) {
  MergeShared& sh = *reinterpret_cast<MergeShared*>(dev::shared_memory());
  const int k = p.k;
  const uint64_t* keys = p.buffers + static_cast<int64_t>(blockIdx.x) * p.splits * p.capacity;
  auto key_at = [&](int64_t i) {
    const int64_t range = i / k;
    return keys[range * p.capacity + (i - range * k)];
  };
  const int64_t count = static_cast<int64_t>(p.splits) * k;
  // At least k keys are real (each range holds min(k, its rows) and k <= n), so threshold > kEmptyKey
  // and exactly k keys reach it.
  const uint64_t threshold = block_select(key_at, count, k, sh.select);
  if (threadIdx.x == 0) sh.count = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < count; i += kThreads) {
    const uint64_t key = key_at(i);
    if (key >= threshold) {
      const unsigned slot = atomicAdd(&sh.count, 1u);
      if (slot < static_cast<unsigned>(k)) sh.best[slot] = key;
    }
  }
  int width = 1;
  while (width < k) width <<= 1;
  for (int i = k + threadIdx.x; i < width; i += kThreads) sh.best[i] = kEmptyKey;
  __syncthreads();
  sort_descending(sh.best, width);
  const int64_t out = static_cast<int64_t>(blockIdx.x) * k;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    p.scores[out + i] = key_score(sh.best[i]);
    p.indices[out + i] = key_row(sh.best[i]);
  }
}

using ScanKernel = void (*)(ScanParams);

struct ScanVariant {
  ScanKernel kernel;
  size_t shared_bytes;
};

template <typename T, int BM>
ScanVariant variant() {
  return {&scan_kernel<T, BM>, sizeof(ScanShared<T, BM>)};
}

ScanVariant scan_variant(DType dtype, int block_m) {
  switch (dtype) {
    case DType::kBFloat16:
      return block_m == 16 ? variant<__nv_bfloat16, 16>() : variant<__nv_bfloat16, 64>();
    case DType::kFloat16:
      return block_m == 16 ? variant<__half, 16>() : variant<__half, 64>();
    case DType::kFloat32:
      return block_m == 16 ? variant<float, 16>() : variant<float, 64>();
  }
  throw std::invalid_argument("unknown dtype");
}

size_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_shape(const TopkShape& s) {
  require(s.m >= 1 && s.m <= kMaxRows, "m (number of queries) must be between 1 and 2^31 - 1, got " +
                                           std::to_string(s.m));
  require(s.n >= 1 && s.n <= kMaxRows, "n (corpus rows) must be between 1 and 2^31 - 1, got " + std::to_string(s.n));
  require(s.d >= 1 && s.d <= kMaxRows, "d (dimension) must be between 1 and 2^31 - 1, got " + std::to_string(s.d));
  const int64_t max_k = lesser(kMaxK, s.n);
  require(s.k >= 1 && s.k <= max_k, "k must be between 1 and min(" + std::to_string(kMaxK) + ", n) = " +
                                        std::to_string(max_k) + ", got " + std::to_string(s.k));
}

void check_matrix(const void* data, int64_t stride, const TopkShape& s, const char* name) {
  const auto address = reinterpret_cast<uintptr_t>(data);
  require(data != nullptr, std::string(name) + " is a null pointer");
  require(address % kAlignment == 0, std::string(name) + " must start on a " + std::to_string(kAlignment) +
                                         "-byte boundary, got address " + std::to_string(address));
  require(stride >= s.d, std::string(name) + " row stride must be >= d = " + std::to_string(s.d) + ", got " +
                             std::to_string(stride));
  require(stride * element_size(s.dtype) % kAlignment == 0,
          std::string(name) + " row stride must be a multiple of " + std::to_string(kAlignment) + " bytes, got " +
              std::to_string(stride) + " elements of " + std::to_string(element_size(s.dtype)) + " bytes");
}

}  // namespace

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float16") return DType::kFloat16;
  throw std::invalid_argument("dtype must be 'float32', 'bfloat16' or 'float16', got '" + name + "'");
}

Plan make_plan(const TopkShape& shape) {
  check_shape(shape);
  Plan plan{};
  plan.block_m = shape.m <= 16 ? 16 : 64;
  // Room for k kept keys plus one tile's worth (128) of new ones, plus k more so that a cut, which
  // reads the whole buffer, happens at most once per k new candidates.
  plan.capacity = static_cast<int>(ceil_div(2 * shape.k + kBlockN, 32) * 32);
  const ScanVariant scan = scan_variant(shape.dtype, plan.block_m);
  plan.shared_bytes = scan.shared_bytes;
  const int device = rt::current_device();
  const int max_shared = rt::max_shared_bytes(device);
  if (plan.shared_bytes > static_cast<size_t>(max_shared)) {
    throw std::runtime_error("the top-k kernel needs " + std::to_string(plan.shared_bytes) +
                             " bytes of shared memory per block; this GPU allows " + std::to_string(max_shared) +
                             " (qrerank's kernel targets sm_80 and newer)");
  }
  rt::allow_shared_bytes(scan.kernel, plan.shared_bytes);
  const int64_t resident = std::max<int64_t>(
      1, int64_t{rt::sm_count(device)} * rt::blocks_per_sm(scan.kernel, kThreads, plan.shared_bytes));
  const int64_t n_tiles = ceil_div(shape.n, kBlockN);
  const int64_t q_tiles = ceil_div(shape.m, plan.block_m);
  // A block scans 1/splits of the corpus for its query tile, and ceil(q_tiles * splits / resident)
  // waves of blocks run, so the time goes as waves / splits: take the split count minimising it
  // (the fewest on a tie: less merging). Beyond `resident` splits the ratio cannot improve.
  const int64_t max_splits = lesser(lesser(resident, std::max<int64_t>(1, n_tiles / kMinTilesPerSplit)), 65535);
  int64_t best = 1, best_waves = ceil_div(q_tiles, resident);
  for (int64_t splits = 2; splits <= max_splits; ++splits) {
    const int64_t waves = ceil_div(q_tiles * splits, resident);
    if (waves * best < best_waves * splits) {
      best = splits;
      best_waves = waves;
    }
  }
  plan.tiles_per_split = static_cast<int>(ceil_div(n_tiles, best));
  plan.splits = static_cast<int>(ceil_div(n_tiles, plan.tiles_per_split));  // so that no range is empty
  plan.workspace_bytes = static_cast<size_t>(shape.m) * plan.splits * plan.capacity * sizeof(uint64_t);
  return plan;
}

void topk(const TopkArgs& args) {
  const TopkShape& s = args.shape;
  check_shape(s);
  check_matrix(args.queries, args.query_stride, s, "queries");
  check_matrix(args.corpus, args.corpus_stride, s, "corpus");
  require(args.scores != nullptr && args.indices != nullptr, "scores and indices must not be null pointers");
  require(reinterpret_cast<uintptr_t>(args.indices) % 8 == 0 && reinterpret_cast<uintptr_t>(args.scores) % 4 == 0,
          "scores and indices must be aligned to their element size");
  require(reinterpret_cast<uintptr_t>(args.workspace) % 8 == 0, "workspace must be 8-byte aligned");
  const Plan plan = make_plan(s);
  require(args.workspace != nullptr && args.workspace_bytes >= plan.workspace_bytes,
          "workspace must hold " + std::to_string(plan.workspace_bytes) + " bytes, got " +
              std::to_string(args.workspace_bytes));

  auto* buffers = static_cast<uint64_t*>(args.workspace);
  const ScanParams scan{args.queries, args.query_stride, args.corpus, args.corpus_stride,
                        static_cast<int>(s.m), static_cast<int>(s.n), static_cast<int>(s.d), static_cast<int>(s.k),
                        plan.splits, plan.tiles_per_split, plan.capacity, buffers};
  const dim3 scan_grid(static_cast<unsigned>(ceil_div(s.m, plan.block_m)), static_cast<unsigned>(plan.splits));
  rt::launch(scan_variant(s.dtype, plan.block_m).kernel, scan_grid, dim3(kThreads), plan.shared_bytes, args.stream,
             scan);
  const MergeParams merge{buffers, plan.splits, plan.capacity, static_cast<int>(s.k), args.scores, args.indices};
  rt::launch(merge_kernel, dim3(static_cast<unsigned>(s.m)), dim3(kThreads), sizeof(MergeShared), args.stream,
             merge);
}

}  // namespace qrerank
