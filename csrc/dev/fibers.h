// The scheduler under dev/emulate.h: a CUDA block as blockDim fibers (ucontext) on the calling thread.
//
// A fiber runs until it reaches a barrier (block or warp) or yields; each round resumes the runnable
// fibers in a new random order. Errors inside a fiber are recorded and rethrown by launch_kernel; a
// barrier that can never complete is reported as a deadlock. Development and CI tool only.
#pragma once

#include <vector_types.h>  // dim3; this CUDA header builds with any C++ compiler
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace qrerank::emu {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxSharedBytes = 227 * 1024;  // sm_90's opt-in limit per block

struct Copy {
  void* dst;
  const void* src;
  int bytes;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  unsigned tid = 0;
  bool done = false;
  int waiting = 0;  // 0 runnable, 1 at the block barrier, 2 at its warp's barrier
  std::vector<Copy> pending;               // cp.async issued since the last commit
  std::deque<std::vector<Copy>> in_flight;  // committed groups, oldest first
};

struct Block {
  dim3 block_idx, block_dim, grid_dim;
  unsigned threads = 0;
  std::vector<Fiber> fibers;
  unsigned char* shared = nullptr;
  unsigned block_arrived = 0;
  std::vector<unsigned> warp_arrived;
  std::vector<uint64_t> exchange;  // [warp * 32 + lane]: values of shuffles and ballots
  Fiber* current = nullptr;
  ucontext_t scheduler;
  std::function<void()> body;
  std::string error;
};

inline Block*& active() {
  static Block* block = nullptr;
  return block;
}

inline Fiber& self() { return *active()->current; }

inline void fail(const std::string& message) { throw std::logic_error("emulated kernel: " + message); }

inline void yield() { swapcontext(&self().context, &active()->scheduler); }

inline void block_barrier() {
  Block& b = *active();
  self().waiting = 1;
  if (++b.block_arrived == b.threads) {
    for (Fiber& f : b.fibers) f.waiting = f.waiting == 1 ? 0 : f.waiting;
    b.block_arrived = 0;
  }
  yield();
}

inline void warp_barrier() {
  Block& b = *active();
  const unsigned warp = self().tid / 32;
  self().waiting = 2;
  if (++b.warp_arrived[warp] == 32) {
    for (unsigned t = warp * 32; t < warp * 32 + 32; ++t) b.fibers[t].waiting = 0;
    b.warp_arrived[warp] = 0;
  }
  yield();
}

inline void require_full(unsigned mask) {
  if (mask != 0xffffffffu) fail("warp collectives are emulated for full warps only");
}

// Every lane deposits `value`, then reads lane `source`'s (the second barrier keeps slots until all read).
template <typename T>
T exchange(T value, unsigned source) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "exchange of at most 8 bytes");
  Block& b = *active();
  const unsigned warp = self().tid / 32;
  uint64_t raw = 0;
  std::memcpy(&raw, &value, sizeof(T));
  b.exchange[self().tid] = raw;
  warp_barrier();
  raw = b.exchange[warp * 32 + source];
  warp_barrier();
  T out;
  std::memcpy(&out, &raw, sizeof(T));
  return out;
}

inline void fiber_main() {
  Block& b = *active();
  try {
    b.body();
  } catch (const std::exception& e) {
    if (b.error.empty()) b.error = e.what();
  }
  Fiber& f = self();
  for (const auto& group : f.in_flight)
    if (!group.empty() && b.error.empty()) b.error = "emulated kernel: cp.async copies issued but never waited for";
  f.done = true;
}

inline std::mt19937& rng() {
  static std::mt19937 generator(20240611u);
  return generator;
}

inline void run_block(Block& b) {
  for (Fiber& f : b.fibers) {
    f.done = false;
    f.waiting = 0;
    f.pending.clear();
    f.in_flight.clear();
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  std::vector<Fiber*> runnable;
  for (;;) {
    runnable.clear();
    bool finished = true;
    for (Fiber& f : b.fibers) {
      finished = finished && f.done;
      if (!f.done && f.waiting == 0) runnable.push_back(&f);
    }
    if (finished || !b.error.empty()) return;  // after an error the block is abandoned
    if (runnable.empty()) {
      b.error = "emulated kernel: deadlock, a barrier was not reached by every thread it waits for";
      return;
    }
    std::shuffle(runnable.begin(), runnable.end(), rng());
    for (Fiber* f : runnable) {
      if (f->done || f->waiting != 0) continue;
      b.current = f;
      swapcontext(&b.scheduler, &f->context);
    }
  }
}

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args... args) {
  if (block.y != 1 || block.z != 1 || block.x % 32 != 0 || block.x > 1024)
    throw std::invalid_argument("emulator: 1-D blocks of whole warps (<= 1024 threads) only");
  if (shared_bytes > kMaxSharedBytes) throw std::invalid_argument("emulator: too much shared memory requested");
  Block b;
  b.block_dim = block;
  b.grid_dim = grid;
  b.threads = block.x;
  b.fibers = std::vector<Fiber>(b.threads);
  for (unsigned t = 0; t < b.threads; ++t) {
    b.fibers[t].tid = t;
    b.fibers[t].stack.reset(new char[kStackBytes]);
  }
  b.warp_arrived.assign(b.threads / 32, 0);
  b.exchange.assign(b.threads, 0);
  b.body = [&] { kernel(args...); };
  const size_t padded = (shared_bytes + 127) / 128 * 128;
  Block* outer = active();
  active() = &b;
  for (unsigned z = 0; z < grid.z && b.error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && b.error.empty(); ++y)
      for (unsigned x = 0; x < grid.x && b.error.empty(); ++x) {
        b.block_idx = dim3(x, y, z);
        b.shared = static_cast<unsigned char*>(std::aligned_alloc(128, padded == 0 ? 128 : padded));
        std::memset(b.shared, 0xA5, padded == 0 ? 128 : padded);
        run_block(b);
        std::free(b.shared);
      }
  active() = outer;
  if (!b.error.empty()) throw std::runtime_error(b.error);
}

inline dim3 thread_index() { return dim3(self().tid, 0, 0); }

}  // namespace qrerank::emu
