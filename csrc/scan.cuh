// Pass 1 of the top-k: fused similarity + filtering. Block (x, y) scans query tile x (BM queries) against
// corpus range y (a run of 128-row tiles). Each tile's scores S = Q C^T [BM, 128] are computed in fp32
// (tensor cores for bf16/fp16, FMA for fp32) into shared memory and never reach global memory: a score
// whose key beats its query's running k-th best goes to that query's candidate buffer in the workspace,
// and a buffer about to overflow is cut back to its k best by warp_select, which raises the threshold.
// At the end each buffer's first k keys are the range's top k (unordered, kEmptyKey-padded); the merge
// kernel (topk.cu) selects across ranges. Few scores pass once the threshold has settled, so the scan
// runs at the speed of the tile product and the corpus read.
#pragma once

#include <cstdint>
#include <type_traits>

#include "keys.cuh"
#include "platform.cuh"
#include "select.cuh"

namespace qrerank {

constexpr int kBlockN = 128;     // corpus rows per tile
constexpr int kStages = 4;       // cp.async pipeline depth (chunks in flight)
constexpr int kChunkBytes = 64;  // bytes of each row loaded per pipeline step (16 bf16 x 2 MMA steps)

template <typename T>
struct Tiling {
  static constexpr int kVec = 16 / sizeof(T);                // elements per 16-byte copy
  static constexpr int kBlockK = kChunkBytes / sizeof(T);    // elements of a row per step: 32 or 16 (fp32)
  static constexpr int kStride = kBlockK + kVec;             // smem row: 80 bytes, so 8 rows hit distinct banks
};

struct ScanParams {
  const void* queries;   // [m, d], rows query_stride elements apart
  int64_t query_stride;
  const void* corpus;    // [n, d], rows corpus_stride elements apart
  int64_t corpus_stride;
  int m, n, d, k;
  int splits, tiles_per_split, capacity;
  uint64_t* buffers;     // [m][splits][capacity] candidate keys
};

template <typename T, int BM>
struct ScanShared {
  alignas(128) T a[kStages][BM][Tiling<T>::kStride];       // query chunks   [stage][query][k]
  alignas(128) T b[kStages][kBlockN][Tiling<T>::kStride];  // corpus chunks  [stage][row][k]
  alignas(128) float s[BM][kBlockN + 4];                   // one tile's scores [query][row]; +4 spreads banks
  uint64_t threshold[BM];                                  // key to beat; kEmptyKey until k keys were kept
  int count[BM];                                           // keys in each query's candidate buffer
  unsigned hist[kWarps][kBins];                            // warp_select histograms, one per warp
};

// bf16/fp16 tile product on tensor cores (WMMA 16x16x16, fp32 accumulators). The warps form a
// kWarpsM x kWarpsN grid over the BM x 128 tile; each owns kFragsM x kFragsN accumulator fragments.
template <typename T, int BM>
struct MmaTile {
  static constexpr int kWarpsM = BM >= 32 ? BM / 32 : 1;
  static constexpr int kWarpsN = kWarps / kWarpsM;
  static constexpr int kFragsM = BM / kWarpsM / 16;
  static constexpr int kFragsN = kBlockN / kWarpsN / 16;
  static constexpr int kStride = Tiling<T>::kStride;
  static_assert(kFragsM * kWarpsM * 16 == BM && kFragsN * kWarpsN * 16 == kBlockN, "warp grid covers the tile");

  dev::wmma::fragment<dev::wmma::accumulator, 16, 16, 16, float> acc[kFragsM][kFragsN];

  __device__ void zero() {
    for (int i = 0; i < kFragsM; ++i)
      for (int j = 0; j < kFragsN; ++j) dev::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  // acc += a_chunk @ b_chunk^T; a: [BM][kStride] queries, b: [128][kStride] corpus rows (B = C^T, col-major).
  __device__ void step(const T (*a)[kStride], const T (*b)[kStride]) {
    namespace wmma = dev::wmma;
    const int warp = threadIdx.x / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
    for (int kk = 0; kk < Tiling<T>::kBlockK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[kFragsM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[kFragsN];
        for (int i = 0; i < kFragsM; ++i) wmma::load_matrix_sync(fa[i], &a[(wm * kFragsM + i) * 16][kk], kStride);
      for (int j = 0; j < kFragsN; ++j) wmma::load_matrix_sync(fb[j], &b[(wn * kFragsN + j) * 16][kk], kStride);
      for (int i = 0; i < kFragsM; ++i)
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  __device__ void store(float (*s)[kBlockN + 4]) {
    const int warp = threadIdx.x / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
    for (int i = 0; i < kFragsM; ++i)
      for (int j = 0; j < kFragsN; ++j)
        dev::wmma::store_matrix_sync(&s[(wm * kFragsM + i) * 16][(wn * kFragsN + j) * 16], acc[i][j], kBlockN + 4,
                                     dev::wmma::mem_row_major);
  }
};

// fp32 tile product on the FMA units (tensor cores would round inputs to tf32). Thread (tm, tn) of a
// 16 x 16 grid owns rows tm*kRows.. and columns tn + 16j, so a warp reads 16 distinct corpus rows per k.
template <int BM>
struct FmaTile {
  static constexpr int kRows = BM / 16;
  static constexpr int kCols = kBlockN / 16;
  static constexpr int kStride = Tiling<float>::kStride;
  static_assert(kThreads == 256, "16 x 16 thread grid");

  float acc[kRows][kCols];

  __device__ void zero() {
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
  }

  __device__ void step(const float (*a)[kStride], const float (*b)[kStride]) {
    const int tm = threadIdx.x / 16, tn = threadIdx.x % 16;
    for (int kk = 0; kk < Tiling<float>::kBlockK; ++kk) {
      float av[kRows], bv[kCols];
        for (int i = 0; i < kRows; ++i) av[i] = a[tm * kRows + i][kk];
      for (int j = 0; j < kCols; ++j) bv[j] = b[tn + 16 * j][kk];
      for (int i = 0; i < kRows; ++i)
        for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }

  __device__ void store(float (*s)[kBlockN + 4]) {
    const int tm = threadIdx.x / 16, tn = threadIdx.x % 16;
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < kCols; ++j) s[tm * kRows + i][tn + 16 * j] = acc[i][j];
  }
};

template <typename T, int BM>
using TileProduct = std::conditional_t<std::is_same_v<T, float>, FmaTile<BM>, MmaTile<T, BM>>;

// Start copying rows [row0, row0 + ROWS) x columns [col0, col0 + kBlockK) of src into dst. Rows at or
// past row_end and columns at or past d are zero-filled, so they add nothing to any dot product.
template <typename T, int ROWS>
__device__ void load_chunk(T (*dst)[Tiling<T>::kStride], const T* src, int64_t stride, int64_t row0, int64_t row_end,
                           int col0, int d) {
  constexpr int kVec = Tiling<T>::kVec, kPerRow = kChunkBytes / 16;
  for (int i = threadIdx.x; i < ROWS * kPerRow; i += kThreads) {
    const int r = i / kPerRow, c = (i % kPerRow) * kVec;
    const int64_t row = row0 + r;
    const int col = col0 + c;
    int bytes = 0;
    if (row < row_end && col < d) bytes = static_cast<int>(lesser(d - col, kVec) * sizeof(T));
    const T* from = bytes > 0 ? src + row * stride + col : src;  // nothing is read when bytes == 0
    dev::cp_async_16(&dst[r][c], from, bytes);
  }
}

// Append every score of the tile in sh.s whose key beats its query's threshold to that query's buffer.
// e runs over the tile row by row, so the 32 lanes of a warp share one query and can reserve buffer
// slots with one atomic. A buffer holds at most capacity - 128 keys before a tile, so it cannot overflow.
template <int BM, typename Shared, typename Buffer>
__device__ void filter_tile(Shared& sh, Buffer buffer, int queries, int64_t row0, int64_t row_end) {
  using namespace dev;
  static_assert(kBlockN % 32 == 0 && (BM * kBlockN) % kThreads == 0, "uniform trip count, one query per warp");
  const int lane = threadIdx.x & 31;
  for (int e = threadIdx.x; e < BM * kBlockN; e += kThreads) {
    const int qi = e / kBlockN, j = e % kBlockN;
    const int64_t row = row0 + j;
    const bool valid = qi < queries && row < row_end;
    const uint64_t key = valid ? make_key(sh.s[qi][j], static_cast<uint32_t>(row)) : kEmptyKey;
    const bool pass = key > sh.threshold[qi];
    const unsigned ballot = __ballot_sync(kFullMask, pass);
    if (ballot == 0) continue;
    const int leader = __ffs(static_cast<int>(ballot)) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(&sh.count[qi], __popc(ballot));
    base = __shfl_sync(kFullMask, base, leader);
    if (pass) buffer(qi)[base + __popc(ballot & ((1u << lane) - 1u))] = key;
  }
}

// Cut every buffer holding more than `limit` keys back to its k best; warp w serves queries w, w + 8, ...
template <typename Shared, typename Buffer>
__device__ void shrink_buffers(Shared& sh, Buffer buffer, int queries, int k, int limit) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int qi = warp; qi < queries; qi += kWarps) {
    const int count = sh.count[qi];
    if (count > limit) {
      const uint64_t threshold = warp_select(buffer(qi), count, k, sh.hist[warp]);
      if (lane == 0) {
        sh.count[qi] = k;
        sh.threshold[qi] = threshold;
      }
      __syncwarp(dev::kFullMask);  // the final pass below re-reads count[qi] from every lane
    }
  }
}

// Two blocks per SM: caps registers at 128 (with no minimum, ptxas chose fewer and spilled).
template <typename T, int BM>
__global__ void __launch_bounds__(kThreads, 2) scan_kernel(ScanParams p) {
  using namespace dev;
  using Shared = ScanShared<T, BM>;
  constexpr int kBlockK = Tiling<T>::kBlockK;
  Shared& sh = *reinterpret_cast<Shared*>(shared_memory());
  const T* queries = static_cast<const T*>(p.queries);
  const T* corpus = static_cast<const T*>(p.corpus);

  const int q0 = blockIdx.x * BM;
  const int rows_q = static_cast<int>(lesser(BM, p.m - q0));  // real queries in this tile
  const int split = blockIdx.y;
  const int64_t tile_begin = static_cast<int64_t>(split) * p.tiles_per_split;
  const int64_t tile_end = lesser(tile_begin + p.tiles_per_split, ceil_div(p.n, kBlockN));
  const int64_t row_end = lesser(tile_end * kBlockN, p.n);
  const int chunks = static_cast<int>(ceil_div(p.d, kBlockK));  // pipeline steps per tile
  const int64_t steps = (tile_end - tile_begin) * chunks;
  auto buffer = [&](int qi) { return p.buffers + (static_cast<int64_t>(q0 + qi) * p.splits + split) * p.capacity; };

  for (int i = threadIdx.x; i < BM; i += kThreads) {
    sh.threshold[i] = kEmptyKey;
    sh.count[i] = 0;
  }
  __syncthreads();

  // Step s loads chunk s % chunks of tile s / chunks into stage s % kStages: one flat pipeline over
  // all tiles, so the next tile's first chunks are in flight while this tile is filtered.
  auto issue = [&](int64_t s) {
    const int stage = static_cast<int>(s % kStages);
    const int col0 = static_cast<int>(s % chunks) * kBlockK;
    const int64_t row0 = (tile_begin + s / chunks) * kBlockN;
    load_chunk<T, BM>(sh.a[stage], queries, p.query_stride, q0, p.m, col0, p.d);
    load_chunk<T, kBlockN>(sh.b[stage], corpus, p.corpus_stride, row0, row_end, col0, p.d);
  };
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) issue(s);
    cp_async_commit();  // one group per step, empty or not, so wait<kStages - 2> always means "step s landed"
  }

  TileProduct<T, BM> tile;
  for (int64_t s = 0; s < steps; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // step s landed for every thread, and every thread is done reading stage s - 1
    if (s + kStages - 1 < steps) issue(s + kStages - 1);  // into stage (s - 1) % kStages
    cp_async_commit();
    const int chunk = static_cast<int>(s % chunks);
    if (chunk == 0) tile.zero();
    tile.step(sh.a[s % kStages], sh.b[s % kStages]);
    if (chunk == chunks - 1) {
      tile.store(sh.s);
      __syncthreads();
      filter_tile<BM>(sh, buffer, rows_q, (tile_begin + s / chunks) * kBlockN, row_end);
      __syncthreads();
      // No barrier after this: the next reads of count/threshold (next filter) and of sh.s (next store)
      // come after the next tile's store barrier, and warp w alone touches its queries here.
      shrink_buffers(sh, buffer, rows_q, p.k, p.capacity - kBlockN);
    }
  }

  // Keep exactly this range's best k per query in buffer[0, k), padding short buffers with kEmptyKey.
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int qi = warp; qi < rows_q; qi += kWarps) {
    uint64_t* keys = buffer(qi);
    const int count = sh.count[qi];
    if (count > p.k) warp_select(keys, count, p.k, sh.hist[warp]);
    for (int j = count + lane; j < p.k; j += 32) keys[j] = kEmptyKey;
  }
}

}  // namespace qrerank
