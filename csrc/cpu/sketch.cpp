// CPU sketch: the work plan, the item driver, portable kernels and the run-time ISA selection.
// The AVX-512 kernels live in sketch_avx512.cpp. Contract of the projection R: tikmix/rng.h.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
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

// Table path, portable: the same arithmetic in the same order as table_block_avx512 (bit-identical results).
void table_indices_generic(uint64_t key, uint64_t row0, uint64_t blk0, int64_t nblk, uint8_t* I, int64_t ldi) {
  for (int64_t b = 0; b < nblk; ++b) {
    for (int g = 0; g < kGroups; ++g) {
      uint64_t w[kGroupRows];
      for (int j = 0; j < kGroupRows; ++j) w[j] = sign_word(key, row0 + uint64_t(kGroupRows * g + j), blk0 + uint64_t(b));
      uint8_t* dst = I + g * ldi + 64 * b;
      for (int c = 0; c < 64; ++c) {
        unsigned v = 0;
        for (int j = 0; j < kGroupRows; ++j) v |= unsigned((w[j] >> c) & 1u) << j;
        dst[c] = uint8_t(v);
      }
    }
  }
}


void table_block_generic(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                         int64_t lanes, const uint8_t* I, int64_t ldi, int64_t ncols, float* C, float* work) {
  const int64_t L = lanes;
  float* xt = work;
  float* T = work + kTableRows * L;
  transpose_table_x(x, type, ld, scale, m, kc, L, xt);
  for (int g = 0; g < kGroups; ++g) {
    float* Tg = T + g * 64 * L;
    const float* xg = xt + kGroupRows * g * L;
    for (int64_t s = 0; s < L; ++s) {
      Tg[s] = xg[s];
      Tg[L + s] = -xg[s];
    }
    for (int j = 1; j < kGroupRows; ++j) {
      const float* xj = xg + j * L;
      const int half = 1 << j;
      for (int e = 0; e < half; ++e) {
        float* lo = Tg + e * L;
        float* hi = Tg + (e + half) * L;
        for (int64_t s = 0; s < L; ++s) {
          const float t = lo[s];
          hi[s] = t - xj[s];
          lo[s] = t + xj[s];
        }
      }
    }
  }
  float acc[32];
  for (int64_t c = 0; c < ncols; ++c) {
    for (int64_t s = 0; s < L; ++s) acc[s] = 0.0f;
    for (int g = 0; g < kGroups; ++g) {
      const float* e = T + (g * 64 + I[g * ldi + c]) * L;
      for (int64_t s = 0; s < L; ++s) acc[s] += e[s];
    }
    float* p = C + c * L;
    for (int64_t s = 0; s < L; ++s) p[s] += acc[s];
  }
}

IsaKernels make_generic() {
  IsaKernels t;
  t.name = "generic";
  t.tile_f32 = tile_f32_generic;
  t.gemm_f32 = gemm_f32_generic;
  t.pack_f32 = pack_f32_generic;
  t.table_indices = table_indices_generic;
  t.table_block = table_block_generic;
  return t;
}

// The one place that picks the kernel set. Levels from best to plainest; the first the CPU supports wins, capped by
// TIKMIX_CPU_ISA (tests and benchmarks force each path in a fresh process: the choice is made once).
// An AMX level (±1 bf16 sign tiles generated in the AMX tile layout, tdpbf16ps; see csrc/README.md) would go first.
constexpr const char* kIsaLevels[] = {"avx512-bf16", "avx512", "avx2", "generic"};
constexpr int kNumIsaLevels = int(sizeof(kIsaLevels) / sizeof(kIsaLevels[0]));

int isa_cap() {
  const char* env = std::getenv("TIKMIX_CPU_ISA");
  std::string want = env ? env : "";
  if (want.empty() || want == "auto") return 0;
  if (want == "avx512bf16") want = "avx512-bf16";
  for (int level = 0; level < kNumIsaLevels; ++level)
    if (want == kIsaLevels[level]) return level;
  throw std::invalid_argument("tikmix: TIKMIX_CPU_ISA=" + want +
                              " is not a CPU kernel set; use auto, avx512bf16, avx512, avx2 or generic");
}

IsaKernels select_kernels() {
  const int cap = isa_cap();
  IsaKernels t = make_generic();
  if (cap <= 1 && avx512_kernels(t, /*allow_bf16=*/cap == 0)) return t;
  if (cap <= 2 && avx2_kernels(t)) return t;
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

float load_x(const void* row, XType type, int64_t j) {
  switch (type) {
    case XType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(row)[j]);
    case XType::kF16: return half_to_float(static_cast<const uint16_t*>(row)[j]);
    default: return static_cast<const float*>(row)[j];
  }
}

void transpose_table_x(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                       int64_t lanes, float* xt) {
  const size_t esize = type == XType::kF32 ? 4 : 2;
  for (int64_t s = 0; s < lanes; ++s) {
    const void* row = static_cast<const unsigned char*>(x) + size_t(s) * size_t(ld) * esize;
    for (int64_t j = 0; j < kTableRows; ++j) {
      float v = 0.0f;
      if (s < m && j < kc) {
        v = load_x(row, type, j);
        if (scale) v *= scale[j];
      }
      xt[j * lanes + s] = v;
    }
  }
}

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
  const int64_t n1 = std::max<int64_t>(n, 1);
  p.fused = n <= 4;
  // The table path works on 16/32-sample lanes: with N = 5..11 or 17..24 most lanes are padding, and for bf16 input
  // (no scale) the vdpbf16ps tile kernel is then faster (measured on Zen 4: table ≈ 225 GFLOP/s-equivalent × lane
  // fill, vdpbf16ps ≈ 120–180 GFLOP/s per core).
  const int64_t lanes = n / 32 * 32 + (n % 32 == 0 ? 0 : (n % 32 <= 16 ? 16 : 32));
  const bool bf16_ok = type == XType::kBF16 && !has_scale && kern.gemm_bf16 != nullptr;
  p.table = !p.fused && kern.table_block != nullptr && !(bf16_ok && 4 * n < 3 * lanes);
  p.bf16_kernel = !p.fused && !p.table && bf16_ok;
  // Summation order of one output element, per path:
  //   fused / tile: within a d-block an fp32 sum over its rows in order from 0 (bf16 kernel: row pairs through
  //     vdpbf16ps); block sums are added in block order to the item's partial.
  //   table: per 6-row group the signed sum in row order; per 48-row block the 8 group sums in order from 0; blocks
  //     summed in order into a mid-level sum that is added to the item's partial every 16 blocks (768 rows).
  //   Chunk partials are summed in chunk order.
  // So the bits depend on the path, d_block and chunk (functions of n, d, k and the input type), never on k_tile,
  // n_block or the thread count; both levels keep the fp32 error ~ eps·(√block + √(d/block)) rather than eps·√d.
  if (p.table) {
    p.k_tile = std::min<int64_t>(round_up(k, 64), 512);
    p.n_blocks = ceil_div(n1, 128);
    p.n_block = round_up(ceil_div(n1, p.n_blocks), 32);
    p.n_blocks = ceil_div(n1, p.n_block);
    p.d_block = detail::kTableRows;
  } else {
    p.k_tile = std::min<int64_t>(round_up(k, 64), p.fused ? 512 : 256);
    p.n_blocks = ceil_div(n1, 192);
    p.n_block = ceil_div(n1, p.n_blocks);
    p.d_block = p.bf16_kernel ? 512 : (p.fused ? 1024 : 256);
  }
  p.k_tiles = ceil_div(k, p.k_tile);
  // d-chunks: only when the k-tiles × n-blocks give fewer than 16 items, chunks of at least 4096 rows and a multiple
  // of 768 rows, partials (chunks × n × k floats) capped at 2^24 floats. A function of (n, d, k) only.
  const int64_t base = p.k_tiles * p.n_blocks;
  int64_t chunks = 1;
  if (base < 16 && d >= 8192) {
    chunks = std::min(ceil_div(16, base), d / 4096);
    const int64_t cap = (int64_t(1) << 24) / std::max<int64_t>(1, n * k);
    chunks = std::max<int64_t>(1, std::min(chunks, cap));
  }
  p.chunk = chunks > 1 ? round_up(ceil_div(d, chunks), 768) : std::max<int64_t>(d, 1);
  p.chunks = chunks > 1 ? ceil_div(d, p.chunk) : 1;
  return p;
}

namespace {

// Writes an item's raw partial P (row i, column c at P[row_index(i) + c · col_stride]) to the output.
template <typename At>
void write_item(const SketchPlan& plan, const SketchOutput& out, int64_t s, int64_t i0, int64_t m, int64_t c0,
                int64_t cols, At at) {
  for (int64_t i = 0; i < m; ++i) {
    if (plan.chunks == 1) {
      float* dst = out.dst + (i0 + i) * out.ld + c0;
      if (out.accumulate) {
        for (int64_t c = 0; c < cols; ++c) dst[c] += out.alpha * at(i, c);
      } else {
        for (int64_t c = 0; c < cols; ++c) dst[c] = out.alpha * at(i, c);
      }
    } else {
      float* dst = out.partials + (s * plan.n + i0 + i) * plan.k + c0;
      for (int64_t c = 0; c < cols; ++c) dst[c] = at(i, c);
    }
  }
}

}  // namespace

void sketch_items(const SketchPlan& plan, const SketchInput& in, const SketchOutput& out, int64_t begin, int64_t end) {
  using namespace detail;
  if (begin >= end) return;
  const IsaKernels& K = kernels();
  const uint64_t key = rng_key(in.seed);
  const int64_t kt_pad = round_up(plan.k_tile, 64);
  const int64_t db = plan.d_block;
  const size_t elem = in.type == XType::kF32 ? 4 : 2;
  const bool use_fused = plan.fused && K.fused_f32 != nullptr;

  Buffer P = aligned_buffer(size_t(round_up(plan.n_block, 32)) * size_t(kt_pad) * 4);
  Buffer Pm, A, B, I, W;
  if (plan.table) {
    Pm = aligned_buffer(size_t(round_up(plan.n_block, 32)) * size_t(kt_pad) * 4);
    I = aligned_buffer(size_t(kGroups) * size_t(kt_pad));
    W = aligned_buffer(size_t(table_work_floats(32)) * 4);
  } else {
    A = aligned_buffer(size_t(plan.n_block) * size_t(db + 2) * 4);
    B = use_fused ? aligned_buffer(64) : aligned_buffer(size_t(db + 2) * size_t(kt_pad) * 4);
  }
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
    const unsigned char* xbase = static_cast<const unsigned char*>(in.x) + size_t(i0) * size_t(in.ld) * elem;

    if (plan.table) {
      // Sub-blocks of 32 samples (the last one 16 if it fits), each with a [ncols][lanes] partial at P + s0·ncols.
      const int64_t mpad = round_up(m, 16);
      float* Pmf = reinterpret_cast<float*>(Pm.get());
      uint8_t* Ib = reinterpret_cast<uint8_t*>(I.get());
      float* work = reinterpret_cast<float*>(W.get());
      std::memset(Pf, 0, size_t(mpad) * size_t(ncols) * 4);
      std::memset(Pmf, 0, size_t(mpad) * size_t(ncols) * 4);
      int64_t count = 0;
      for (int64_t rb = r0; rb < r1; rb += db) {
        const int64_t kc = std::min(db, r1 - rb);
        K.table_indices(key, in.offset + uint64_t(rb), blk0, nblk, Ib, ncols);
        for (int64_t s0 = 0; s0 < m; s0 += 32) {
          const int64_t lanes = m - s0 > 16 ? 32 : 16;
          K.table_block(xbase + (size_t(s0) * size_t(in.ld) + size_t(rb)) * elem, in.type, in.ld,
                        in.scale ? in.scale + rb : nullptr, std::min<int64_t>(lanes, m - s0), kc, lanes, Ib, ncols,
                        ncols, Pmf + s0 * ncols, work);
        }
        if (++count % 16 == 0 || rb + db >= r1) {
          for (int64_t q = 0; q < mpad * ncols; ++q) Pf[q] += Pmf[q];
          std::memset(Pmf, 0, size_t(mpad) * size_t(ncols) * 4);
        }
      }
      write_item(plan, out, s, i0, m, c0, cols, [&](int64_t i, int64_t c) {
        const int64_t s0 = i / 32 * 32, lanes = m - s0 > 16 ? 32 : 16;
        return Pf[s0 * ncols + c * lanes + (i - s0)];
      });
      continue;
    }

    std::memset(Pf, 0, size_t(m) * size_t(ncols) * 4);
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
    write_item(plan, out, s, i0, m, c0, cols, [&](int64_t i, int64_t c) { return Pf[i * ncols + c]; });
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
