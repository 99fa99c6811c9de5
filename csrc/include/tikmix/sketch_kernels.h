// Declarations of the torch-free CPU kernels of the sketch family (other families: reduce_kernels.h,
// CUDA launchers: cuda_kernels.h).
// Pointers are raw, sizes int64, no ATen types: the binding (csrc/binding) adapts tensors to these and
// parallelises with at::parallel_for over the work items of a SketchPlan.
//
// How a CPU sketch runs (y[N,k] = (x ⊙ scale) · R[offset : offset+d, :], R from rng.h):
//   1. make_sketch_plan(N, d, k) splits the work into items (k-tile × n-block × d-chunk). The plan is a pure
//      function of (N, d, k) — never of the thread count — so the bits of y never depend on threads.
//   2. sketch_items() computes items [begin, end): for each d-block of the item's chunk it generates the sign
//      tile of R (several signs per hash word, AVX-512 mask→blend or a portable byte table) into a
//      thread-local buffer, packs the x block (converting bf16/fp16, applying scale), and multiplies with a
//      register-blocked micro-kernel (fp32 FMA, or AVX512-BF16 vdpbf16ps on bf16 input). For N ≤ 4 a fused
//      sign-apply path adds ±x straight from the hash bits without a tile.
//      Within an item the sum over d is accumulated in fp32 in a fixed order.
//   3. With one d-chunk the item writes alpha·P (or dst + alpha·P) into its own block of the output; with
//      several, each chunk's raw partial goes to partials[chunk] and combine_chunks() adds them in chunk order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace tikmix::cpu {

// out[r * ld + c] = R[row0 + r, col0 + c] / s_k * value  for r < rows, c < cols, i.e. ±value with the
// signs of the RNG contract (rng.h). Thread-safe; callers parallelise over disjoint tiles.
void fill_signs_f32(uint64_t seed, uint64_t row0, int64_t rows, int64_t col0, int64_t cols, float value,
                    float* out, int64_t ld);

// Element type of x.
enum class XType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Work decomposition of one sketch call. A pure function of (n, d, k, x type): results never depend on threads.
struct SketchPlan {
  int64_t n = 0, d = 0, k = 0;
  int64_t k_tile = 0, k_tiles = 0;    // output columns per item (a multiple of 64 except for the last tile)
  int64_t n_block = 0, n_blocks = 0;  // rows of x per item
  int64_t chunk = 0, chunks = 0;      // rows of d per item; chunks > 1 needs a partials buffer + combine_chunks
  int64_t d_block = 0;                // rows of R generated per tile inside an item
  bool fused = false;                 // N ≤ 4: fused sign-apply path, no tile
  bool table = false;                 // N ≥ 5: table path (per 6-row group, all 64 signed sums of x; lookup-adds)
  bool bf16_kernel = false;           // tile path with bf16 input, no scale, AVX512-BF16: vdpbf16ps kernel
  int64_t items() const { return k_tiles * n_blocks * chunks; }
};

// has_scale matters only for choosing the bf16 kernel (scaled input is formed in fp32).
SketchPlan make_sketch_plan(int64_t n, int64_t d, int64_t k, XType type, bool has_scale);

struct SketchInput {
  const void* x = nullptr;       // x[i, j] at element offset i * ld + j (rows may be strided, columns contiguous)
  XType type = XType::kF32;
  int64_t ld = 0;
  const float* scale = nullptr;  // [d] or nullptr
  uint64_t seed = 0;
  uint64_t offset = 0;           // global row of R for column 0 of x
};

// Where items write. chunks == 1: dst[i * ld + c] = alpha · P[i, c] (+ dst[...] when accumulate), P the raw
// (unscaled ±1) sum. chunks > 1: partials[(chunk · n + i) · k + c] = P_chunk[i, c] (raw), then call
// combine_chunks.
struct SketchOutput {
  float* dst = nullptr;
  int64_t ld = 0;
  float alpha = 1.0f;
  bool accumulate = false;
  float* partials = nullptr;  // [chunks, n, k] when plan.chunks > 1
};

// Computes items [begin, end) of the plan (thread-safe for disjoint item ranges; allocates its own workspace).
void sketch_items(const SketchPlan& plan, const SketchInput& in, const SketchOutput& out, int64_t begin, int64_t end);

// For flat indices [begin, end) of an [n, k] output: dst = alpha · (((p_0 + p_1) + p_2) + …) (+ dst), summing the
// chunk partials in chunk order (dst has leading dimension out.ld).
void combine_chunks(const SketchPlan& plan, const SketchOutput& out, int64_t row_begin, int64_t row_end);

// ---- parallel execution --------------------------------------------------------------------------------------
// The kernels never start threads: a caller-supplied loop runs them. `parallel_for(begin, end, grain, body)` must
// call body(b, e) on disjoint ranges that cover [begin, end), on any threads, and return after all of them (the
// binding passes at::parallel_for; a serial loop `body(begin, end)` is valid too). Every plan below is a function of
// the shapes only, and every output element is computed by exactly one call in a fixed order, so the bits never
// depend on how the loop splits the range or how many threads run it.

// The whole sketch: out (see SketchOutput, partials ignored) = alpha · (x ⊙ scale) · R[offset : offset+d, 0:k] as
// unit signs (+ out when accumulate), for x with n rows of d. Allocates the chunk partials itself.
template <class ParallelFor>
void run_sketch(int64_t n, int64_t d, int64_t k, const SketchInput& in, SketchOutput out, bool has_scale,
                ParallelFor&& parallel_for) {
  if (n <= 0 || k <= 0) return;
  const SketchPlan plan = make_sketch_plan(n, d, k, in.type, has_scale);
  std::unique_ptr<float[]> partials;
  if (plan.chunks > 1) {
    partials.reset(new float[size_t(plan.chunks) * size_t(n) * size_t(k)]);
    out.partials = partials.get();
  }
  parallel_for(int64_t(0), plan.items(), int64_t(1),
               [&](int64_t begin, int64_t end) { sketch_items(plan, in, out, begin, end); });
  if (plan.chunks > 1) {
    const int64_t grain = k >= 16384 ? 1 : 16384 / k;
    parallel_for(int64_t(0), n, grain, [&](int64_t begin, int64_t end) { combine_chunks(plan, out, begin, end); });
  }
}

// Which instruction set the kernels dispatch to on this CPU: "avx512-bf16", "avx512", "avx2" or "generic".
// The environment variable TIKMIX_CPU_ISA=avx512bf16|avx512|avx2|generic (or auto), read once at the first call,
// caps it (tests, benchmarks); any other value throws std::invalid_argument.
const char* sketch_isa();

}  // namespace tikmix::cpu
