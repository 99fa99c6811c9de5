// Materialisation of the random projection R (rng.h) as ±value tiles.
#include "sketch_isa.h"
#include "tikmix/rng.h"
#include "tikmix/sketch_kernels.h"

namespace tikmix::cpu {

void fill_signs_f32(uint64_t seed, uint64_t row0, int64_t rows, int64_t col0, int64_t cols, float value,
                    float* out, int64_t ld) {
  const uint64_t key = rng_key(seed);
  if (col0 % 64 == 0) {  // word-aligned: the ISA kernel (AVX-512 blend, or the portable byte table)
    detail::kernels().tile_f32(key, row0, rows, uint64_t(col0 / 64), cols, value, out, ld);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + r * ld;
    int64_t c = 0;
    while (c < cols) {
      const uint64_t col = uint64_t(col0 + c);
      const uint64_t word = sign_word(key, row0 + uint64_t(r), col >> 6);
      const int64_t first = int64_t(col & 63);
      const int64_t n = (64 - first) < (cols - c) ? (64 - first) : (cols - c);
      for (int64_t i = 0; i < n; ++i) dst[c + i] = ((word >> (first + i)) & 1ULL) ? -value : value;
      c += n;
    }
  }
}

}  // namespace tikmix::cpu
