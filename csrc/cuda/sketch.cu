// CUDA sketch kernel: y[N,k] = s_k · (x ⊙ scale) · R[offset : offset + d, :] (R: the ±1 signs) on the tensor cores, with R's
// ±1 entries generated in registers from the hash of the RNG contract (tikmix/rng.h) and never stored.
//
// Layout (tikmix/mma_layout.h has the lane arithmetic, tikmix/cuda_plan.h the launch plan):
//   - yᵀ = Rᵀ·xᵀ with mma.sync.m16n8k16, fp32 accumulators: R is the A operand (64 output columns per warp:
//     one hash word per lane per 32 rows, an 8×8 byte transpose by shuffles, one LOP3 per register), x the
//     B operand read with ldmatrix from a shared-memory tile [samples][kTileRows] that all warps of the CTA share.
//   - CTA = `warps` warps side by side in columns (64 each) × 8·NT samples; grid = (column CTAs, sample groups,
//     d-splits). Tiles of x arrive by cp.async, kStages deep; rows past d and samples past N are zero-filled.
//   - bf16/fp16 x without scale feed the MMA directly. float32 x, and any x with a per-row scale, go through
//     one conversion pass per tile: v = x·scale (fp32, rounded once, as on the CPU) is split exactly into three
//     bf16 parts by truncation (hi + mid + lo = v for normal floats), and each part is one MMA with the same A.
//   - Split-K: split z covers tiles [z·chunk_tiles, …) and writes fp32 partial sums [z][N][k_pad]; a second
//     kernel adds them in split order, scales by s_k and stores (or adds to) out. With one split the first
//     kernel writes out directly. No float atomics: the bits depend on (N, d, k) only.
// All row and offset arithmetic is 64-bit.
// launch.cuh: CUDA headers, or with -DTIKMIX_CPU_EMULATION (tests/test_mma_layout.py) tests/cpp/cuda_emu.h, which
// emulates the few primitives below on the CPU so that this exact kernel code runs without a GPU.
#include "launch.cuh"

#include <algorithm>
#include <cstdint>

#include "tikmix/cuda_kernels.h"
#include "tikmix/mma_layout.h"
#include "tikmix/rng.h"

namespace tikmix::cuda {
namespace {

using mma::kStepRows;

constexpr int kThreadsMax = 32 * kMaxWarps;
constexpr int kPitch16 = kTileRows * 2 + 16;  // bytes per sample row of a 16-bit tile (+16: ldmatrix conflict-free)
constexpr int kStagesDirect = 4;
constexpr int kStagesSplit = 3;
constexpr int kParts = 3;                      // hi / mid / lo
static_assert(kTileRows % kStepRows == 0, "a tile is a whole number of warp steps");
static_assert(kTileRows == 64, "convert_tile assumes 8 groups of 8 rows per sample row");

enum Mode : int { kDirectBF16 = 0, kDirectF16 = 1, kSplit = 2 };

struct Params {
  const char* x;        // [n, d] elements of `dtype`
  int64_t n, d;
  int64_t ldx_bytes;    // row stride of x in bytes
  int esize;            // bytes per element of x
  int dtype;            // DType
  int aligned;          // x and ldx_bytes are 16-byte aligned: cp.async path
  const float* scale;   // [d] or nullptr
  uint64_t key;         // rng_key(seed)
  uint64_t offset;      // global row of x's column 0
  int64_t k, blocks, k_pad;
  int64_t chunk_tiles;  // tiles per split
  int64_t tiles;        // total tiles: ceil(d / kTileRows)
  float sk;             // output scale (1/√k rounded to float for the sketch op)
  int accumulate;
  int splits;
  float* out;           // [n, k], row stride ldo
  int64_t ldo;
  float* partial;       // [splits][n][k_pad] when splits > 1
};

#if !defined(TIKMIX_CPU_EMULATION)
// ---- the hardware primitives (emulated by tests/cpp/cuda_emu.h) -----------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <bool F16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (F16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
  __half_raw hr;
  hr.x = uint16_t(bits);
  return __half2float(__half(hr));
}
#endif  // !TIKMIX_CPU_EMULATION

// Stage x rows row0 .. row0 + kTileRows of samples sample0 .. sample0 + S into `dst` ([S][pitch] bytes),
// zero-filling rows ≥ d and samples ≥ n. The per-chunk work is 32-bit except the one source address.
__device__ __forceinline__ void load_tile(const Params& p, char* dst, int pitch, int S, int64_t sample0,
                                          int64_t row0, int tid, int nthreads) {
  const int64_t rows_left64 = p.d - row0;
  const int rows_left = rows_left64 < kTileRows ? int(rows_left64) : kTileRows;  // ≥ 0
  const int64_t n_left64 = p.n - sample0;
  const int n_left = n_left64 < S ? int(n_left64) : S;
  const int lg = p.esize == 4 ? 2 : 1;                              // log2(bytes per element)
  const char* src0 = p.x + sample0 * p.ldx_bytes + (row0 << lg);
  if (p.aligned) {
    const int cps_log2 = lg + 2;  // log2(16-byte chunks per sample row): kTileRows·esize/16 = 8 or 16
    const int bytes_left = rows_left << lg;
    for (int idx = tid; idx < (S << cps_log2); idx += nthreads) {
      const int s = idx >> cps_log2, cb = (idx & ((1 << cps_log2) - 1)) << 4;  // chunk byte offset in the row
      const int bytes = mma::chunk_bytes(s, cb, n_left, bytes_left);
      const char* src = bytes ? src0 + s * p.ldx_bytes + cb : p.x;
      cp_async16(dst + s * pitch + cb, src, bytes);
    }
  } else {  // any alignment: element loads (synchronous; a fallback for odd strides or views)
    for (int idx = tid; idx < S * kTileRows; idx += nthreads) {
      const int s = idx / kTileRows, j = idx % kTileRows;
      const bool in = s < n_left && j < rows_left;
      const char* src = src0 + (in ? s * p.ldx_bytes + (j << lg) : 0);
      char* d = dst + s * pitch + (j << lg);
      if (lg == 2) *reinterpret_cast<uint32_t*>(d) = in ? __ldg(reinterpret_cast<const unsigned int*>(src)) : 0u;
      else *reinterpret_cast<uint16_t*>(d) = in ? __ldg(reinterpret_cast<const unsigned short*>(src)) : uint16_t(0);
    }
  }
}

__device__ __forceinline__ float load_as_float(const char* p, int dtype) {
  if (dtype == int(DType::kFloat32)) return *reinterpret_cast<const float*>(p);
  const uint32_t bits = *reinterpret_cast<const uint16_t*>(p);
  if (dtype == int(DType::kBFloat16)) return mma::bits_f32(bits << 16);
  return half_bits_to_float(bits);
}

// Split-path conversion of one staged tile: raw [S][pitch_raw] of x's dtype → kParts × [S][kPitch16] bf16.
__device__ __forceinline__ void convert_tile(const Params& p, const char* raw, int pitch_raw, char* conv, int S,
                                             int64_t row0, int tid, int nthreads) {
  const int part_stride = S * kPitch16;
  for (int idx = tid; idx < S * (kTileRows / 8); idx += nthreads) {
    const int s = idx >> 3, r8 = (idx & 7) * 8;
    const char* src = raw + s * pitch_raw + r8 * p.esize;
    uint32_t hw[4], mw[4], lw[4];
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      uint32_t h[2], m[2], l[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float v = load_as_float(src + (e + u) * p.esize, p.dtype);
        const int64_t r = row0 + r8 + e + u;
        if (p.scale != nullptr && r < p.d) v = __fmul_rn(v, __ldg(p.scale + r));
        mma::split3_bf16(v, h[u], m[u], l[u]);
      }
      hw[e / 2] = h[0] | (h[1] << 16);
      mw[e / 2] = m[0] | (m[1] << 16);
      lw[e / 2] = l[0] | (l[1] << 16);
    }
    char* dst = conv + s * kPitch16 + r8 * 2;
    *reinterpret_cast<uint4*>(dst) = make_uint4(hw[0], hw[1], hw[2], hw[3]);
    *reinterpret_cast<uint4*>(dst + part_stride) = make_uint4(mw[0], mw[1], mw[2], mw[3]);
    *reinterpret_cast<uint4*>(dst + 2 * part_stride) = make_uint4(lw[0], lw[1], lw[2], lw[3]);
  }
}

template <int NT, int MODE>
__global__ void __launch_bounds__(kThreadsMax) sketch_mma_kernel(const Params p) {
  constexpr bool kF16 = MODE == kDirectF16;
  constexpr int kStages = MODE == kSplit ? kStagesSplit : kStagesDirect;
  constexpr int kNParts = MODE == kSplit ? kParts : 1;
  constexpr int S = 8 * NT;  // samples per CTA
#if defined(TIKMIX_CPU_EMULATION)
  char* smem = emu::dynamic_smem();
#else
  extern __shared__ __align__(16) char smem[];
#endif

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int64_t block = int64_t(blockIdx.x) * (nthreads >> 5) + warp;  // this warp's 64-column hash block
  const bool active = block < p.blocks;
  const int64_t sample0 = int64_t(blockIdx.y) * S;
  const int split = blockIdx.z;
  const int64_t tile0 = int64_t(split) * p.chunk_tiles;
  const int ntiles = int(p.chunk_tiles < p.tiles - tile0 ? p.chunk_tiles : p.tiles - tile0);
  const int64_t row_begin = tile0 * kTileRows;  // first x row of this split

  const int pitch_raw = MODE == kSplit ? kTileRows * p.esize + 16 : kPitch16;
  char* raw = smem;
  char* conv = smem + kStages * S * pitch_raw;  // split path only

  // Lane constants of the generator.
  mma::TransposeSelectors sel = mma::transpose_selectors(lane);
  uint32_t mask = mma::kSignMask, one = kF16 ? mma::kOneF16x2 : mma::kOneBF16x2;
  // Opaque to the compiler: keeps the per-lane selectors and constants in registers instead of rebuilding them
  // inside the loop (ptxas rematerialises them under register pressure otherwise).
#pragma unroll
  for (int st = 0; st < mma::kTransposeStages; ++st) {
    asm volatile("" : "+r"(sel.send[st]), "+r"(sel.lo[st]), "+r"(sel.hi[st]));
  }
  asm volatile("" : "+r"(mask), "+r"(one));
  uint64_t hin = p.key + ((uint64_t(block) << kRowBits) + p.offset + uint64_t(row_begin) +
                          uint64_t(mma::word_row(lane))) * kGolden;
  const uint64_t hstep = uint64_t(kStepRows) * kGolden;

  float acc[NT][mma::kMTiles][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < mma::kMTiles; ++i)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[nt][i][v] = 0.f;

#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < ntiles) load_tile(p, raw + t * S * pitch_raw, pitch_raw, S, sample0, row_begin + int64_t(t) * kTileRows,
                              tid, nthreads);
    cp_async_commit();
  }

  uint64_t w = mix64(hin);
  hin += hstep;
  // ldmatrix row address of this lane within a 16-bit tile: sample (lane & 7) of an n-tile, K group lane >> 3.
  const int lds_off = mma::ldsm_offset(lane, kPitch16);

  for (int t = 0; t < ntiles; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile t is in smem; every warp is done with tile t − 1 (its slot and the conv buffer)
    {
      const int tn = t + kStages - 1;
      if (tn < ntiles)
        load_tile(p, raw + (tn % kStages) * S * pitch_raw, pitch_raw, S, sample0, row_begin + int64_t(tn) * kTileRows,
                  tid, nthreads);
      cp_async_commit();
    }
    const char* tile;
    if constexpr (MODE == kSplit) {
      convert_tile(p, raw + (t % kStages) * S * pitch_raw, pitch_raw, conv, S, row_begin + int64_t(t) * kTileRows,
                   tid, nthreads);
      __syncthreads();
      tile = conv;
    } else {
      tile = raw + (t % kStages) * S * pitch_raw;
    }
    if (!active) continue;

#pragma unroll
    for (int step = 0; step < kTileRows / kStepRows; ++step) {
      uint32_t lo, hi;
      mma::word_to_pair(w, lo, hi);
      w = mix64(hin);  // next step's word: independent of the MMAs below, so it overlaps them
      hin += hstep;
#pragma unroll
      for (int stage = 0; stage < mma::kTransposeStages; ++stage) {
        const uint32_t send = mma::transpose_send(lo, hi, sel, stage);
        const uint32_t recv = __shfl_xor_sync(0xFFFFFFFFu, send, mma::stage_lane_xor(stage));
        mma::transpose_merge(lo, hi, recv, sel, stage);
      }
      uint32_t a[2][mma::kMTiles][4];
      mma::a_fragments(lo, hi, mask, one, a);

      const char* base = tile + lds_off + step * (kStepRows * 2);
#pragma unroll
      for (int part = 0; part < kNParts; ++part) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          uint32_t b[4];
          ldmatrix_x4(b, base + part * S * kPitch16 + nt * 8 * kPitch16);
#pragma unroll
          for (int ks = 0; ks < 2; ++ks)
#pragma unroll
            for (int i = 0; i < mma::kMTiles; ++i) mma16816<kF16>(acc[nt][i], a[ks][i], b[2 * ks], b[2 * ks + 1]);
        }
      }
    }
  }
  cp_async_wait<0>();
  if (!active) return;

  // Epilogue. Accumulator v of m-tile i, n-tile nt: fragment row g + 8(v >> 1) → column 8g + 2i + (v >> 1) of the
  // block; sample 2t4 + (v & 1) of the n-tile. So for a fixed (nt, e = v & 1) the lane holds 8 consecutive columns.
  const int g = mma::lane_g(lane), t4 = mma::lane_t4(lane);
  const int64_t col0 = block * 64 + 8 * g;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t sample = sample0 + nt * 8 + 2 * t4 + e;
      if (sample >= p.n) continue;
      float v[8];
#pragma unroll
      for (int i = 0; i < mma::kMTiles; ++i) {
        v[2 * i] = acc[nt][i][e];
        v[2 * i + 1] = acc[nt][i][2 + e];
      }
      if (p.splits > 1) {
        float4* dst = reinterpret_cast<float4*>(p.partial + (int64_t(split) * p.n + sample) * p.k_pad + col0);
        dst[0] = make_float4(v[0], v[1], v[2], v[3]);
        dst[1] = make_float4(v[4], v[5], v[6], v[7]);
      } else {
        float* dst = p.out + sample * p.ldo + col0;
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          if (col0 + c < p.k) {
            const float y = __fmul_rn(p.sk, v[c]);
            dst[c] = p.accumulate ? __fadd_rn(dst[c], y) : y;
          }
        }
      }
    }
  }
}

// out[n, c] (+)= s_k · Σ_{z in order} partial[z][n][c].
__global__ void sketch_reduce_kernel(const float* __restrict__ partial, int splits, int64_t n, int64_t k,
                                     int64_t k_pad, float sk, int accumulate, float* __restrict__ out, int64_t ldo) {
  const int64_t total = n * k;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t plane = n * k_pad;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t i = idx / k, c = idx - i * k;
    const float* src = partial + i * k_pad + c;
    float s = src[0];
    for (int z = 1; z < splits; ++z) s = __fadd_rn(s, src[z * plane]);
    const float y = __fmul_rn(sk, s);
    float* dst = out + i * ldo + c;
    *dst = accumulate ? __fadd_rn(*dst, y) : y;
  }
}

constexpr int64_t kMaxGridY = 65535;

template <int NT, int MODE>
cudaError_t launch_mma(const Params& p, const SketchPlan& plan, int64_t groups, cudaStream_t stream) {
  constexpr int S = 8 * NT;
  const int pitch_raw = MODE == kSplit ? kTileRows * p.esize + 16 : kPitch16;
  const size_t smem = MODE == kSplit ? size_t(kStagesSplit) * S * pitch_raw + size_t(kParts) * S * kPitch16
                                     : size_t(kStagesDirect) * S * kPitch16;
  auto kernel = sketch_mma_kernel<NT, MODE>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(plan.col_ctas), unsigned(groups), unsigned(plan.splits));
  TIKMIX_LAUNCH(kernel, grid, 32 * plan.warps, smem, stream, p);
  return cudaGetLastError();
}

template <int MODE>
cudaError_t launch_mode(const Params& p, const SketchPlan& plan, int64_t groups, cudaStream_t stream) {
  switch (plan.n_tiles) {
    case 1: return launch_mma<1, MODE>(p, plan, groups, stream);
    case 2: return launch_mma<2, MODE>(p, plan, groups, stream);
    case 4: return launch_mma<4, MODE>(p, plan, groups, stream);
    default: return launch_mma<8, MODE>(p, plan, groups, stream);
  }
}

}  // namespace

cudaError_t sketch(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* scale,
                   uint64_t seed, uint64_t offset, int64_t k, float out_scale, float* out, int64_t ldo,
                   bool accumulate, float* workspace, cudaStream_t stream) {
  if (n <= 0 || k <= 0) return cudaSuccess;
  const SketchPlan plan = sketch_plan(n, d, k);
  // grid.y ≤ 65535 sample groups per launch: more samples (> 4M) go in several launches (always one split then,
  // because the workspace cap of the plan allows splits only for n·k_pad ≤ 2^27).
  if (plan.splits > 65535 || plan.col_ctas > 0x7FFFFFFF || (plan.splits > 1 && plan.groups > kMaxGridY))
    return cudaErrorInvalidConfiguration;
  Params p{};
  p.x = static_cast<const char*>(x);
  p.n = n;
  p.d = d;
  p.esize = dtype == DType::kFloat32 ? 4 : 2;
  p.dtype = int(dtype);
  p.ldx_bytes = ldx * p.esize;
  p.aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (p.ldx_bytes % 16 == 0);
  p.scale = scale;
  p.key = rng_key(seed);
  p.offset = offset;
  p.k = k;
  p.blocks = plan.blocks;
  p.k_pad = plan.k_pad;
  p.chunk_tiles = plan.chunk_tiles;
  p.tiles = std::max<int64_t>(1, ceil_div(d, kTileRows));
  p.sk = out_scale;
  p.accumulate = accumulate ? 1 : 0;
  p.splits = int(plan.splits);
  p.out = out;
  p.ldo = ldo;
  p.partial = workspace;
  if (plan.splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;

  cudaError_t err = cudaSuccess;
  const int64_t group_samples = 8 * int64_t(plan.n_tiles);
  for (int64_t g0 = 0; g0 < plan.groups && err == cudaSuccess; g0 += kMaxGridY) {
    const int64_t groups = std::min(kMaxGridY, plan.groups - g0);
    Params q = p;
    q.x = p.x + g0 * group_samples * p.ldx_bytes;
    q.out = p.out + g0 * group_samples * ldo;
    q.n = std::min(n - g0 * group_samples, groups * group_samples);
    if (dtype == DType::kBFloat16 && scale == nullptr) err = launch_mode<kDirectBF16>(q, plan, groups, stream);
    else if (dtype == DType::kFloat16 && scale == nullptr) err = launch_mode<kDirectF16>(q, plan, groups, stream);
    else err = launch_mode<kSplit>(q, plan, groups, stream);
  }
  if (err != cudaSuccess || plan.splits == 1) return err;

  const int threads = 256;
  const int64_t total = n * k;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(total, threads), 65535 * 8));
  TIKMIX_LAUNCH(sketch_reduce_kernel, blocks, threads, 0, stream, workspace, p.splits, n, k, plan.k_pad, p.sk,
                p.accumulate, out, ldo);
  return cudaGetLastError();
}

}  // namespace tikmix::cuda
