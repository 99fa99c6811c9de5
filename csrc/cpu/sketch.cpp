// CPU sketch: the work plan, the item driver, portable kernels and the run-time ISA selection.
// The AVX-512 kernels live in sketch_avx512.cpp. Contract of the projection R: tikmix/rng.h.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "sketch_isa.h"
#include "tikmix/rng.h"
#include "tikmix/sketch_kernels.h"

namespace tikmix::cpu {
namespace detail {
namespace {

// ---- portable kernels -------------------------------------------------------------------------------------------

// 256 × 8 table: entry [b][i] = -1 if bit i of byte b is set else +1. Built once; read by byte value from shifts
// of the hash word (no reinterpretation of the word's memory).
struct ByteSigns {
  float v[256][8];
  ByteSigns() {
    for (int b = 0; b < 256; ++b)
      for (int i = 0; i < 8; ++i) v[b][i] = ((b >> i) & 1) ? -1.0f : 1.0f;
  }
};
const ByteSigns& byte_signs() {
  static const ByteSigns table;
  return table;
}

void tile_f32_generic(uint64_t key, uint64_t row0, int64_t rows, uint64_t blk0, int64_t cols, float value, float* B,
                      int64_t ldb) {
  const ByteSigns& t = byte_signs();
  const int64_t full = cols / 64, tail = cols % 64;
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = B + r * ldb;
    for (int64_t b = 0; b <= full; ++b) {
      const int64_t n = b < full ? 64 : tail;
      if (n == 0) break;
      const uint64_t w = sign_word(key, row0 + uint64_t(r), blk0 + uint64_t(b));
      float* out = dst + 64 * b;
      if (n == 64 && value == 1.0f) {
        for (int q = 0; q < 8; ++q) std::memcpy(out + 8 * q, t.v[(w >> (8 * q)) & 0xFF], 8 * sizeof(float));
      } else {
        for (int64_t i = 0; i < n; ++i) out[i] = ((w >> i) & 1) ? -value : value;
      }
    }
  }
}

void gemm_f32_generic(const float* A, int64_t lda, int64_t m, const float* B, int64_t ldb, int64_t ncols, int64_t kc,
                      float* C, int64_t ldc) {
  // Row of C in 64-column strips; the inner loop over columns vectorises. For every (i, c) the block sum runs over
  // r in order from 0 and is then added to C (the summation order of the AVX-512 kernels).
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c0 = 0; c0 < ncols; c0 += 64) {
      float acc[64];
      float* crow = C + i * ldc + c0;
      for (int c = 0; c < 64; ++c) acc[c] = 0.0f;
      const float* a = A + i * lda;
      for (int64_t r = 0; r < kc; ++r) {
        const float av = a[r];
        const float* b = B + r * ldb + c0;
        for (int c = 0; c < 64; ++c) acc[c] += av * b[c];
      }
      for (int c = 0; c < 64; ++c) crow[c] += acc[c];
    }
  }
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((man & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void pack_f32_generic(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc, float* A,
                      int64_t lda) {
  for (int64_t i = 0; i < m; ++i) {
    float* dst = A + i * lda;
    switch (type) {
      case XType::kF32:
        std::memcpy(dst, static_cast<const float*>(x) + i * ld, size_t(kc) * sizeof(float));
        break;
      case XType::kBF16: {
        const uint16_t* src = static_cast<const uint16_t*>(x) + i * ld;
        for (int64_t j = 0; j < kc; ++j) dst[j] = bf16_to_float(src[j]);
        break;
      }
      case XType::kF16: {
        const uint16_t* src = static_cast<const uint16_t*>(x) + i * ld;
        for (int64_t j = 0; j < kc; ++j) dst[j] = half_to_float(src[j]);
        break;
      }
    }
    if (scale)
      for (int64_t j = 0; j < kc; ++j) dst[j] *= scale[j];
  }
}

IsaKernels make_generic() {
  IsaKernels t;
  t.name = "generic";
  t.tile_f32 = tile_f32_generic;
  t.gemm_f32 = gemm_f32_generic;
  t.pack_f32 = pack_f32_generic;
  return t;
}

IsaKernels select_kernels() {
  IsaKernels t = make_generic();
  const char* cap = std::getenv("TIKMIX_CPU_ISA");
  const std::string want = cap ? cap : "";
  if (want == "generic") return t;
  avx512_kernels(t, want != "avx512");
  return t;
}

// ---- driver -----------------------------------------------------------------------------------------------------

constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char, AlignedFree>;

Buffer aligned_buffer(size_t bytes) {
  bytes = size_t(round_up(int64_t(std::max<size_t>(bytes, 64)), 64));
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return Buffer(static_cast<unsigned char*>(p));
}

// Pack rows [0, m) × columns [0, kc) of bf16 x into 32-bit pairs A[i, p] = (x[i, 2p], x[i, 2p+1]), zero-padded.
void pack_bf16_pairs(const uint16_t* x, int64_t ld, int64_t m, int64_t kc, uint32_t* A, int64_t lda) {
  for (int64_t i = 0; i < m; ++i) {
    const uint16_t* src = x + i * ld;
    uint32_t* dst = A + i * lda;
    const int64_t pairs = kc / 2;
    for (int64_t p = 0; p < pairs; ++p) dst[p] = uint32_t(src[2 * p]) | (uint32_t(src[2 * p + 1]) << 16);
    if (kc & 1) dst[pairs] = uint32_t(src[kc - 1]);
  }
}

}  // namespace

const IsaKernels& generic_kernels() {
  static const IsaKernels t = make_generic();
  return t;
}

const IsaKernels& kernels() {
  static const IsaKernels t = select_kernels();
  return t;
}

}  // namespace detail

const char* sketch_isa() {
  const auto& k = detail::kernels();
  if (k.gemm_bf16) return "avx512-bf16";
  return k.name;
}

SketchPlan make_sketch_plan(int64_t n, int64_t d, int64_t k, XType type, bool has_scale) {
  using detail::ceil_div;
  using detail::round_up;
  SketchPlan p;
  p.n = n;
  p.d = d;
  p.k = k;
  const auto& kern = detail::kernels();
  p.fused = n <= 4;
  p.bf16_kernel = !p.fused && type == XType::kBF16 && !has_scale && kern.gemm_bf16 != nullptr;
  // Summation order of one output element: within a d-block, an fp32 sum over its rows in order starting from 0
  // (bf16 kernel: row pairs through vdpbf16ps); block sums are added in block order to the item's partial; chunk
  // partials in chunk order. So the bits depend on d_block and chunk (functions of n, d, k and the path), never on
  // k_tile, n_block or the thread count. Blocking the sum also keeps the fp32 error ~ eps·(√d_block + √(d/d_block)).
  p.k_tile = std::min<int64_t>(round_up(k, 64), p.fused ? 512 : 256);
  p.k_tiles = ceil_div(k, p.k_tile);
  p.n_blocks = ceil_div(std::max<int64_t>(n, 1), 192);
  p.n_block = ceil_div(std::max<int64_t>(n, 1), p.n_blocks);
  p.d_block = p.bf16_kernel ? 512 : (p.fused ? 1024 : 256);
  // d-chunks: only when the k-tiles × n-blocks give fewer than 16 items, chunks of at least 4096 rows, a multiple
  // of 256 rows, and partials (chunks × n × k floats) capped at 2^24 floats. A function of (n, d, k) only.
  const int64_t base = p.k_tiles * p.n_blocks;
  int64_t chunks = 1;
  if (base < 16 && d >= 8192) {
    chunks = std::min(ceil_div(16, base), d / 4096);
    const int64_t cap = (int64_t(1) << 24) / std::max<int64_t>(1, n * k);
    chunks = std::max<int64_t>(1, std::min(chunks, cap));
  }
  p.chunk = chunks > 1 ? round_up(ceil_div(d, chunks), 256) : std::max<int64_t>(d, 1);
  p.chunks = chunks > 1 ? ceil_div(d, p.chunk) : 1;
  return p;
}

void sketch_items(const SketchPlan& plan, const SketchInput& in, const SketchOutput& out, int64_t begin, int64_t end) {
  using namespace detail;
  if (begin >= end) return;
  const IsaKernels& K = kernels();
  const uint64_t key = rng_key(in.seed);
  const int64_t kt_pad = round_up(plan.k_tile, 64);
  const int64_t db = plan.d_block;
  const size_t elem = in.type == XType::kF32 ? 4 : 2;

  Buffer P = aligned_buffer(size_t(plan.n_block) * size_t(kt_pad) * 4);
  Buffer A = aligned_buffer(size_t(plan.n_block) * size_t(db + 2) * 4);
  const bool use_fused = plan.fused && K.fused_f32 != nullptr;
  Buffer B = use_fused ? aligned_buffer(64) : aligned_buffer(size_t(db + 2) * size_t(kt_pad) * 4);
  float* Pf = reinterpret_cast<float*>(P.get());

  for (int64_t item = begin; item < end; ++item) {
    // Item order: n-block fastest, then k-tile, then chunk.
    const int64_t b = item % plan.n_blocks;
    const int64_t t = (item / plan.n_blocks) % plan.k_tiles;
    const int64_t s = item / (plan.n_blocks * plan.k_tiles);
    const int64_t i0 = b * plan.n_block, m = std::min(plan.n, i0 + plan.n_block) - i0;
    const int64_t c0 = t * plan.k_tile, cols = std::min(plan.k, c0 + plan.k_tile) - c0;
    const int64_t ncols = round_up(cols, 64), nblk = ncols / 64;
    const uint64_t blk0 = uint64_t(c0 / 64);
    const int64_t r0 = s * plan.chunk, r1 = std::min(plan.d, r0 + plan.chunk);
    if (m <= 0) continue;

    std::memset(Pf, 0, size_t(m) * size_t(ncols) * 4);
    const unsigned char* xbase = static_cast<const unsigned char*>(in.x) + size_t(i0) * size_t(in.ld) * elem;
    for (int64_t rb = r0; rb < r1; rb += db) {
      const int64_t kc = std::min(db, r1 - rb);
      const void* xblk = xbase + size_t(rb) * elem;
      const float* sc = in.scale ? in.scale + rb : nullptr;
      const uint64_t row = in.offset + uint64_t(rb);
      if (plan.bf16_kernel) {
        const int64_t kp = (kc + 1) / 2, lda = round_up(kp, 16);
        uint32_t* Au = reinterpret_cast<uint32_t*>(A.get());
        uint32_t* Bu = reinterpret_cast<uint32_t*>(B.get());
        pack_bf16_pairs(static_cast<const uint16_t*>(xblk), in.ld, m, kc, Au, lda);
        K.tile_bf16(key, row, kc, blk0, nblk, Bu, ncols);
        K.gemm_bf16(Au, lda, m, Bu, ncols, ncols, kp, Pf, ncols);
      } else {
        const int64_t lda = round_up(kc, 16);
        float* Af = reinterpret_cast<float*>(A.get());
        K.pack_f32(xblk, in.type, in.ld, sc, m, kc, Af, lda);
        if (use_fused) {
          K.fused_f32(Af, lda, m, kc, key, row, blk0, nblk, Pf, ncols);
        } else {
          float* Bf = reinterpret_cast<float*>(B.get());
          K.tile_f32(key, row, kc, blk0, ncols, 1.0f, Bf, ncols);
          K.gemm_f32(Af, lda, m, Bf, ncols, ncols, kc, Pf, ncols);
        }
      }
    }

    if (plan.chunks == 1) {
      for (int64_t i = 0; i < m; ++i) {
        float* dst = out.dst + (i0 + i) * out.ld + c0;
        const float* src = Pf + i * ncols;
        if (out.accumulate) {
          for (int64_t c = 0; c < cols; ++c) dst[c] += out.alpha * src[c];
        } else {
          for (int64_t c = 0; c < cols; ++c) dst[c] = out.alpha * src[c];
        }
      }
    } else {
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(out.partials + (s * plan.n + i0 + i) * plan.k + c0, Pf + i * ncols, size_t(cols) * 4);
    }
  }
}

void combine_chunks(const SketchPlan& plan, const SketchOutput& out, int64_t row_begin, int64_t row_end) {
  const int64_t k = plan.k, plane = plan.n * plan.k;
  for (int64_t i = row_begin; i < row_end; ++i) {
    float* dst = out.dst + i * out.ld;
    const float* p0 = out.partials + i * k;
    for (int64_t c = 0; c < k; ++c) {
      float acc = p0[c];
      for (int64_t s = 1; s < plan.chunks; ++s) acc += p0[s * plane + c];
      dst[c] = out.accumulate ? dst[c] + out.alpha * acc : out.alpha * acc;
    }
  }
}

}  // namespace tikmix::cpu
