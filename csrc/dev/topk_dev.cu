/*
Development harness of the similarity top-k kernels (in the style of llm.c's dev/cuda): a CPU reference,
checks of qrerank::topk against it over odd shapes and tie-heavy data, then timings.

GPU, from the repository root (about a minute to build):
  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xcompiler -fopenmp -o topk_dev \
       csrc/dev/topk_dev.cu csrc/topk.cu
  ./topk_dev          # checks, then n = 1M, d = 1024, bf16, k = 10 for m in {1, 16, 64, 256, 1024, 4096}
  ./topk_dev check    # checks only
CPU emulator (dev/emulate.h; no GPU, slow, so the checks use small shapes and no timing is done):
  g++ -O2 -std=c++17 -DQRERANK_EMULATE -I/usr/local/cuda/include -x c++ csrc/dev/topk_dev.cu csrc/topk.cu -o topk_emu
  ./topk_emu

Integer-valued data makes every dot product exact in fp32 whatever the summation order, so there the
kernel must match the reference bit for bit, ties and all. Normal data is checked up to rounding: each
returned score is within `tol` of the reference score of the row it names, and that row's reference
score is within `tol` of the reference at that rank (rows may swap only inside near-ties).
*/
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../topk.h"

#if !defined(QRERANK_EMULATE)
#include <cuda_runtime.h>
#endif

using qrerank::DType;

// ---------------------------------------------------------------------------------------------------
// device memory (host memory when emulated; filled with garbage so nothing relies on cleared buffers)

#if defined(QRERANK_EMULATE)
void* device_alloc(size_t bytes) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  std::memset(p, 0xCD, (bytes + 255) / 256 * 256 + 256);
  return p;
}
void device_free(void* p) { std::free(p); }
void copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void synchronize() {}
#else
void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}
void* device_alloc(size_t bytes) {
  void* p = nullptr;
  cuda_check(cudaMalloc(&p, bytes + 256), "cudaMalloc");
  cuda_check(cudaMemset(p, 0xCD, bytes + 256), "cudaMemset");
  return p;
}
void device_free(void* p) { cuda_check(cudaFree(p), "cudaFree"); }
void copy(void* dst, const void* src, size_t bytes) { cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy"); }
void synchronize() { cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
#endif

// ---------------------------------------------------------------------------------------------------
// data and the CPU reference

// kNegative: every score < 0, so a zero-filled row past the corpus end would win if it were not masked.
// kHashed: a cheap fill for timing.
enum class Data { kNormal, kIntegers, kAscending, kNegative, kHashed };

struct Case {
  int64_t m, n, d, k;
  DType dtype;
  Data data;
};

const char* dtype_name(DType t) { return t == DType::kFloat32 ? "fp32" : t == DType::kBFloat16 ? "bf16" : "fp16"; }
size_t element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// Round to the dtype and back, so the reference sees exactly the values the kernel reads.
float round_to(float x, DType t) {
  if (t == DType::kBFloat16) return __bfloat162float(__float2bfloat16(x));
  if (t == DType::kFloat16) return __half2float(__float2half(x));
  return x;
}

// Rows of d values `stride` elements apart; the padding is NaN, which the kernel must never read.
int64_t row_stride(int64_t d, DType t) {
  const int64_t per16 = 16 / static_cast<int64_t>(element_size(t));
  return (d + per16 - 1) / per16 * per16;
}

std::vector<unsigned char> encode(const std::vector<float>& x, int64_t d, DType t) {
  const size_t size = element_size(t);
  const int64_t stride = row_stride(d, t), rows = static_cast<int64_t>(x.size()) / d;
  std::vector<unsigned char> out(rows * stride * size, 0xff);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) {
      unsigned char* dst = &out[(r * stride + c) * size];
      const float v = x[r * d + c];
      if (t == DType::kFloat32) {
        std::memcpy(dst, &v, 4);
      } else if (t == DType::kBFloat16) {
        const __nv_bfloat16 b = __float2bfloat16(v);
        std::memcpy(dst, &b, 2);
      } else {
        const __half h = __float2half(v);
        std::memcpy(dst, &h, 2);
      }
    }
  return out;
}

std::vector<float> make_matrix(int64_t rows, int64_t d, Data data, DType t, bool queries, std::mt19937_64& rng) {
  std::vector<float> x(rows * d, 0.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(d)));
  std::uniform_int_distribution<int> small(-2, 2);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) {
      float v = 0.0f;
      if (data == Data::kNormal) v = normal(rng);
      if (data == Data::kIntegers) v = static_cast<float>(small(rng));
      if (data == Data::kAscending && c == 0) v = queries ? 1.0f + r : static_cast<float>(r) / rows;  // score grows with row
      if (data == Data::kNegative) v = (queries ? 1.0f : -1.0f) * (0.5f + std::fabs(normal(rng)));
      if (data == Data::kHashed) v = static_cast<float>((r * 2654435761u + c * 40503u) % 2001u) / 1000.0f - 1.0f;
      x[r * d + c] = round_to(v, t);
    }
  return x;
}

// Scores [m][n] in double, rounded once to float: the exact product for integer data.
std::vector<float> reference_scores(const std::vector<float>& q, const std::vector<float>& c, const Case& cs) {
  std::vector<float> s(cs.m * cs.n);
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < cs.m; ++i)
    for (int64_t j = 0; j < cs.n; ++j) {
      double acc = 0.0;
      for (int64_t t = 0; t < cs.d; ++t) acc += static_cast<double>(q[i * cs.d + t]) * c[j * cs.d + t];
      s[i * cs.n + j] = static_cast<float>(acc);
    }
  return s;
}

// Rows of query i best first, equal scores by ascending row (a stable sort of -score).
std::vector<int64_t> reference_order(const std::vector<float>& s, int64_t i, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[i * n + a] > s[i * n + b]; });
  return order;
}

// ---------------------------------------------------------------------------------------------------
// running and checking

struct Device {
  void *q, *c, *scores, *indices, *workspace;
  size_t workspace_bytes;
};

Device upload(const Case& cs, const std::vector<float>& q, const std::vector<float>& c) {
  const auto qb = encode(q, cs.d, cs.dtype), cb = encode(c, cs.d, cs.dtype);
  Device dv{};
  dv.q = device_alloc(qb.size());
  dv.c = device_alloc(cb.size());
  copy(dv.q, qb.data(), qb.size());
  copy(dv.c, cb.data(), cb.size());
  dv.scores = device_alloc(cs.m * cs.k * sizeof(float));
  dv.indices = device_alloc(cs.m * cs.k * sizeof(int64_t));
  dv.workspace_bytes = qrerank::make_plan({cs.m, cs.n, cs.d, cs.k, cs.dtype}).workspace_bytes;
  dv.workspace = device_alloc(dv.workspace_bytes);
  return dv;
}

void release(Device& dv) {
  for (void* p : {dv.q, dv.c, dv.scores, dv.indices, dv.workspace}) device_free(p);
}

void run(const Case& cs, const Device& dv) {
  const int64_t stride = row_stride(cs.d, cs.dtype);
  qrerank::topk({{cs.m, cs.n, cs.d, cs.k, cs.dtype}, dv.q, stride, dv.c, stride, static_cast<float*>(dv.scores),
                 static_cast<int64_t*>(dv.indices), dv.workspace, dv.workspace_bytes, nullptr});
}

bool check(const Case& cs) {
  std::mt19937_64 rng(cs.m * 1000003 + cs.n * 101 + cs.d * 7 + cs.k);
  const auto q = make_matrix(cs.m, cs.d, cs.data, cs.dtype, true, rng);
  const auto c = make_matrix(cs.n, cs.d, cs.data, cs.dtype, false, rng);
  Device dv = upload(cs, q, c);
  try {
    run(cs, dv);
  } catch (const std::exception& e) {
    std::printf("FAIL m=%lld n=%lld d=%lld k=%lld %s: %s\n", static_cast<long long>(cs.m), static_cast<long long>(cs.n),
                static_cast<long long>(cs.d), static_cast<long long>(cs.k), dtype_name(cs.dtype), e.what());
    release(dv);
    return false;
  }
  synchronize();
  std::vector<float> scores(cs.m * cs.k);
  std::vector<int64_t> indices(cs.m * cs.k);
  copy(scores.data(), dv.scores, scores.size() * sizeof(float));
  copy(indices.data(), dv.indices, indices.size() * sizeof(int64_t));
  release(dv);

  const bool exact = cs.data == Data::kIntegers || cs.data == Data::kAscending;
  const float tol = exact ? 0.0f : 4e-6f * std::sqrt(static_cast<float>(cs.d)) + 1e-6f;
  const auto ref = reference_scores(q, c, cs);
  int bad = 0;
  for (int64_t i = 0; i < cs.m && bad < 5; ++i) {
    const auto order = reference_order(ref, i, cs.n);
    std::vector<char> seen(cs.n, 0);
    for (int64_t r = 0; r < cs.k && bad < 5; ++r) {
      const int64_t row = indices[i * cs.k + r];
      const float score = scores[i * cs.k + r];
      bool ok = row >= 0 && row < cs.n && !seen[row];
      if (ok) {
        seen[row] = 1;
        const float expected = ref[i * cs.n + row], at_rank = ref[i * cs.n + order[r]];
        ok = std::fabs(score - expected) <= tol && std::fabs(expected - at_rank) <= tol;
        if (exact) ok = ok && row == order[r] && score == at_rank;
      }
      if (!ok) {
        std::printf("    query %lld rank %lld: got row %lld score %.9g, reference row %lld score %.9g\n",
                    static_cast<long long>(i), static_cast<long long>(r), static_cast<long long>(row), score,
                    static_cast<long long>(order[r]), ref[i * cs.n + order[r]]);
        ++bad;
      }
    }
  }
  const char* kinds[] = {"normal", "integers", "ascending", "negative", "hashed"};
  std::printf("%s m=%-5lld n=%-6lld d=%-5lld k=%-5lld %-4s %-9s\n", bad ? "FAIL" : "ok  ", static_cast<long long>(cs.m),
              static_cast<long long>(cs.n), static_cast<long long>(cs.d), static_cast<long long>(cs.k),
              dtype_name(cs.dtype), kinds[static_cast<int>(cs.data)]);
  return bad == 0;
}

std::vector<Case> check_cases() {
  std::vector<Case> cases;
  const DType dtypes[] = {DType::kBFloat16, DType::kFloat16, DType::kFloat32};
  const Data kinds[] = {Data::kNormal, Data::kIntegers, Data::kAscending, Data::kNegative};
  // every dtype x data kind on small shapes
  const int64_t small[][4] = {{1, 1, 1, 1},       {1, 7, 3, 7},       {3, 130, 8, 5},     {16, 300, 40, 10},
                              {17, 1000, 33, 1},  {5, 1500, 64, 200}, {70, 600, 24, 130}, {2, 2100, 16, 1024}};
  for (const auto& s : small)
    for (DType t : dtypes)
      for (Data data : kinds) cases.push_back({s[0], s[1], s[2], s[3], t, data});
#if !defined(QRERANK_EMULATE)
  // one data kind per dtype on large shapes (the CPU reference costs m * n * d multiply-adds)
  const int64_t large[][4] = {{16, 30000, 40, 10},     {17, 100000, 33, 1},   {70, 6000, 1024, 130},
                              {1000, 20011, 128, 100}, {64, 1000003, 16, 10}, {7, 50000, 4096, 1024},
                              {2048, 5000, 256, 1024}};
  for (const auto& s : large)
    for (int i = 0; i < 3; ++i) cases.push_back({s[0], s[1], s[2], s[3], dtypes[i], kinds[i + 1]});
#endif
  return cases;
}

#if !defined(QRERANK_EMULATE)
// Median time of `reps` launches (the 2 GB corpus is 40x the L2, so no flush is needed between them).
void time_topk(int64_t m, int64_t n, int64_t d, int64_t k) {
  const Case cs{m, n, d, k, DType::kBFloat16, Data::kNormal};
  std::mt19937_64 rng(1);
  Device dv = upload(cs, make_matrix(m, d, Data::kHashed, cs.dtype, true, rng),
                     make_matrix(n, d, Data::kHashed, cs.dtype, false, rng));
  cudaEvent_t start, stop;
  cuda_check(cudaEventCreate(&start), "cudaEventCreate");
  cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<float> ms;
  for (int rep = 0; rep < 12; ++rep) {
    cuda_check(cudaEventRecord(start), "cudaEventRecord");
    run(cs, dv);
    cuda_check(cudaEventRecord(stop), "cudaEventRecord");
    cuda_check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0.0f;
    cuda_check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    if (rep >= 2) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double t = ms[ms.size() / 2] * 1e-3;
  const double bytes = static_cast<double>(n + m) * d * 2, flops = 2.0 * m * n * d;
  std::printf("m=%-5lld %8.3f ms %8.0f GB/s %7.1f TFLOP/s\n", static_cast<long long>(m), t * 1e3, bytes / t / 1e9,
              flops / t / 1e12);
  release(dv);
}
#endif

int main(int argc, char** argv) {
  const bool timing = !(argc > 1 && std::string(argv[1]) == "check");
  int failed = 0;
  const auto begin = std::chrono::steady_clock::now();
  for (const Case& cs : check_cases()) failed += !check(cs);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  std::printf("%d case(s) failed; checks took %.1f s\n", failed, seconds);
#if !defined(QRERANK_EMULATE)
  if (timing && failed == 0)
    for (int64_t m : {1, 16, 64, 256, 1024, 4096}) time_topk(m, 1000000, 1024, 10);
#else
  (void)timing;
#endif
  return failed == 0 ? 0 : 1;
}
