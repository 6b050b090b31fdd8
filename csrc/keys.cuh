// One 64-bit key per (score, row): the high word is the fp32 score mapped to an unsigned integer of the
// same order, the low word is ~row. Descending key order is then exactly "higher score first, lower row
// first among equal scores", and the keys of one query are all distinct, so every selection below is a
// plain "largest k integers" problem with one right answer: ties need no special case anywhere.
#pragma once

#include <cstdint>
#include <cstring>

#include "platform.cuh"

namespace qrerank {

// Below every real key: rows are < 2^31, so the low word ~row of a real key is >= 2^31.
constexpr uint64_t kEmptyKey = 0;

QR_HD inline uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

QR_HD inline float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

// Monotone map float -> uint32: positives get the sign bit set, negatives are bit-inverted (a larger
// magnitude then maps lower). -0.0 is folded onto +0.0 (they compare equal, so they must tie by row),
// and NaN maps to 0, below -inf, so a NaN score (only possible from inf - inf in the sum) ranks last.
QR_HD inline uint32_t order_score(float score) {
  uint32_t bits = float_bits(score);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0u;
  if (bits == 0x80000000u) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Inverse of order_score (0 decodes to a NaN).
QR_HD inline float unorder_score(uint32_t ordered) {
  return bits_float((ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered);
}

QR_HD inline uint64_t make_key(float score, uint32_t row) {
  return (static_cast<uint64_t>(order_score(score)) << 32) | static_cast<uint32_t>(~row);
}

QR_HD inline float key_score(uint64_t key) { return unorder_score(static_cast<uint32_t>(key >> 32)); }

QR_HD inline int64_t key_row(uint64_t key) { return static_cast<uint32_t>(~static_cast<uint32_t>(key)); }

}  // namespace qrerank
