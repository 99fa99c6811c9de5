// CUDA implementations of the reduce family: the CPU's checks (reduce_checks.h; value checks through their ATen
// versions), a device guard, the current stream, then the torch-free launchers of csrc/cuda (cuda_kernels.h).
// Rows are grouped with ATen's stable sort, so every result follows the contract order of reduce_kernels.h and
// equals the CPU's bit for bit (segment sums, mixture scores) or to fp32 rounding (products through cuBLAS, which
// run in full fp32 unless the caller enabled TF32 with torch.backends.cuda.matmul.allow_tf32).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "reduce_checks.h"
#include "tikmix/cuda_kernels.h"
#include "tikmix/reduce_kernels.h"
#include "tikmix/rng.h"

namespace tikmix::binding {
namespace {

constexpr int64_t kKronChunkFloats = int64_t(1) << 26;  // fp32 elements of Ã + g̃ per sample chunk (256 MiB)

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// Rows grouped by id on the device: group j's rows are rows[offsets[j] .. offsets[j+1]) in ascending order.
struct DevicePlan {
  at::Tensor sorted_ids, rows, offsets;  // [N], [N], [G + 1] int64
};

DevicePlan device_plan(const char* op, const at::Tensor& ids, int64_t num_groups, const char* range) {
  check_ids_values(op, ids, num_groups, range);
  const at::Tensor ids64 = ids.to(at::kLong);
  auto sorted = at::sort(ids64, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  DevicePlan plan;
  plan.sorted_ids = std::get<0>(sorted);
  plan.rows = std::get<1>(sorted);
  plan.offsets = at::searchsorted(plan.sorted_ids, at::arange(num_groups + 1, ids64.options()));
  return plan;
}

at::Tensor unit_column_stride(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}
int64_t row_stride(const at::Tensor& t) { return t.size(0) <= 1 ? t.size(1) : t.stride(0); }

// segment sums of m[N,k] (float32/float64) into a new [G,k] tensor, in the contract order.
at::Tensor segment_into_new(const at::Tensor& m, const DevicePlan& plan, int64_t num_groups, bool mean) {
  const int64_t n = m.size(0), k = m.size(1);
  at::Tensor out = at::zeros({num_groups, k}, m.options());
  if (n == 0 || k == 0) return out;
  // Segments: maximal runs of the sorted rows with one group and one 4096-row chunk.
  const at::Tensor chunk = at::div(plan.rows, kSegmentChunkRows, "floor");
  at::Tensor starts = at::ones({n}, plan.rows.options().dtype(at::kBool));
  if (n > 1) {
    starts.narrow(0, 1, n - 1).copy_(at::logical_or(
        plan.sorted_ids.narrow(0, 1, n - 1) != plan.sorted_ids.narrow(0, 0, n - 1),
        chunk.narrow(0, 1, n - 1) != chunk.narrow(0, 0, n - 1)));
  }
  const at::Tensor seg_start = at::nonzero(starts).view({-1}).contiguous();
  const at::Tensor group_seg = at::searchsorted(seg_start, plan.offsets).contiguous();
  const int64_t segments = seg_start.size(0);
  const at::Tensor x = unit_column_stride(m);
  const at::Tensor rows = plan.rows.contiguous(), offsets = plan.offsets.contiguous();
  at::Tensor partial = at::empty({segments, k}, m.options());
  cudaError_t err;
  if (m.scalar_type() == at::kFloat) {
    err = cuda::segment_partials(x.data_ptr<float>(), row_stride(x), k, rows.data_ptr<int64_t>(), n,
                                 seg_start.data_ptr<int64_t>(), segments, partial.data_ptr<float>(), stream());
    if (err == cudaSuccess)
      err = cuda::segment_combine(partial.data_ptr<float>(), k, group_seg.data_ptr<int64_t>(),
                                  offsets.data_ptr<int64_t>(), num_groups, mean, out.data_ptr<float>(), k, stream());
  } else {
    err = cuda::segment_partials(x.data_ptr<double>(), row_stride(x), k, rows.data_ptr<int64_t>(), n,
                                 seg_start.data_ptr<int64_t>(), segments, partial.data_ptr<double>(), stream());
    if (err == cudaSuccess)
      err = cuda::segment_combine(partial.data_ptr<double>(), k, group_seg.data_ptr<int64_t>(),
                                  offsets.data_ptr<int64_t>(), num_groups, mean, out.data_ptr<double>(), k, stream());
  }
  C10_CUDA_CHECK(err);
  return out;
}

at::Tensor segment_impl_cuda(const char* op, const at::Tensor& x, const at::Tensor& ids, int64_t num_groups,
                             bool mean) {
  check_segment_inputs(op, x, ids, num_groups);
  const c10::cuda::CUDAGuard guard(x.device());
  const DevicePlan plan = device_plan(op, ids, num_groups, "num_groups");
  return segment_into_new(x, plan, num_groups, mean);
}

at::Tensor segment_sum_cuda(const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  return segment_impl_cuda("segment_sum", x, ids, num_groups, /*mean=*/false);
}

at::Tensor segment_mean_cuda(const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  return segment_impl_cuda("segment_mean", x, ids, num_groups, /*mean=*/true);
}

// ---- sketch_kron ----------------------------------------------------------------------------------------------
// Ã = a·R_in and g̃ = g·R_out are unit-sign sketches: the tensor-core sketch kernel with R generated in registers
// (exact ±1 products, fp32 accumulation; fp32 input through the exact 3-way bf16 split). Then Y = g̃ᵀ·Ã (cuBLAS
// bmm, fp32) and one multiplication by kron_scale, as on the CPU.
at::Tensor unit_sketch(const at::Tensor& rows2d, int64_t k, uint64_t seed) {
  const at::Tensor x = unit_column_stride(rows2d);
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor out = at::empty({n, k}, x.options().dtype(at::kFloat));
  const int64_t ws = cuda::sketch_workspace_floats(n, d, k);
  at::Tensor workspace = ws > 0 ? at::empty({ws}, out.options()) : at::Tensor();
  const cuda::DType dt = x.scalar_type() == at::kBFloat16 ? cuda::DType::kBFloat16
                         : x.scalar_type() == at::kHalf   ? cuda::DType::kFloat16
                                                          : cuda::DType::kFloat32;
  C10_CUDA_CHECK(cuda::sketch(x.data_ptr(), dt, n, d, row_stride(x), nullptr, seed, 0, k, 1.0f,
                              out.data_ptr<float>(), k, false, ws > 0 ? workspace.data_ptr<float>() : nullptr,
                              stream()));
  return out;
}

at::Tensor sketch_kron_cuda(const at::Tensor& a, const at::Tensor& g, int64_t k_in, int64_t k_out, int64_t seed,
                            int64_t layer) {
  check_sketch_kron_inputs(a, g, k_in, k_out, seed, layer);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), t = a.size(1), in_f = a.size(2), out_f = g.size(2);
  at::Tensor out = at::zeros({n, k_out * k_in}, a.options().dtype(at::kFloat));
  if (n == 0 || t == 0 || in_f == 0 || out_f == 0) return out;
  const uint64_t seed_in = kron_seed(uint64_t(seed), uint64_t(layer), 0);
  const uint64_t seed_out = kron_seed(uint64_t(seed), uint64_t(layer), 1);
  const int64_t chunk = std::max<int64_t>(1, kKronChunkFloats / (t * (k_in + k_out)));  // shapes only
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t nc = std::min(chunk, n - n0);
    const at::Tensor a_t = unit_sketch(a.narrow(0, n0, nc).reshape({nc * t, in_f}), k_in, seed_in).view({nc, t, k_in});
    const at::Tensor g_t =
        unit_sketch(g.narrow(0, n0, nc).reshape({nc * t, out_f}), k_out, seed_out).view({nc, t, k_out});
    at::Tensor y = out.narrow(0, n0, nc).view({nc, k_out, k_in});
    at::bmm_out(y, g_t.transpose(1, 2), a_t);  // Y = g̃ᵀ·Ã
  }
  out.mul_(float(1.0 / std::sqrt(double(k_in) * double(k_out))));  // kron_scale (reduce_kernels.h)
  return out;
}

// ---- group_influence ------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> group_influence_cuda(const at::Tensor& train, const at::Tensor& ids,
                                                        int64_t num_groups, const at::Tensor& target,
                                                        const std::optional<at::Tensor>& precond) {
  constexpr const char* op = "group_influence";
  check_group_influence_inputs(train, ids, num_groups, target, precond);
  const c10::cuda::CUDAGuard guard(train.device());
  check_finite(op, train, "train");
  check_finite(op, target, "target");
  if (precond.has_value()) check_finite(op, *precond, "precond");
  const DevicePlan plan = device_plan(op, ids, num_groups, "num_groups");
  // per_sample[z, i] = target_i · (P · train_z) = (train · (target · P)ᵀ)[z, i]
  const at::Tensor q = precond.has_value() ? at::mm(target, *precond) : target;
  at::Tensor per_sample = at::mm(train, q.t()).contiguous();
  at::Tensor sums = segment_into_new(per_sample, plan, num_groups, /*mean=*/false);
  check_group_sums_finite(sums);
  return {sums.t().contiguous(), per_sample};
}

// ---- mixture_scores -------------------------------------------------------------------------------------------
at::Tensor mixture_scores_cuda(const at::Tensor& per_sample, const at::Tensor& ids, const at::Tensor& candidates,
                               int64_t draws, int64_t seed) {
  constexpr const char* op = "mixture_scores";
  check_mixture_scores_inputs(per_sample, ids, candidates, draws, seed);
  const c10::cuda::CUDAGuard guard(per_sample.device());
  check_finite(op, per_sample, "per_sample");
  const int64_t num_cand = candidates.size(0), num_groups = candidates.size(1), n = per_sample.size(1);
  const DevicePlan plan = device_plan(op, ids, num_groups, "G = candidates.size(1)");

  // Draw counts on the host: the same function and the same messages as the CPU implementation.
  const at::Tensor w = candidates.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor offsets_host = plan.offsets.to(at::kCPU);
  const double* wp = w.data_ptr<double>();
  const int64_t* off = offsets_host.data_ptr<int64_t>();
  at::Tensor counts = at::empty({num_cand, num_groups}, at::TensorOptions().dtype(at::kLong));
  int64_t* cnt_all = counts.data_ptr<int64_t>();
  for (int64_t c = 0; c < num_cand; ++c) {
    int64_t* cnt = cnt_all + c * num_groups;
    int64_t j = -1;
    const int s = cpu::mixture_counts(wp + c * num_groups, num_groups, draws, cnt, &j);
    TORCH_CHECK_VALUE(s != cpu::kMixtureNonFinite, "tikmix.mixture_scores: candidates must be finite, got ",
                      wp[c * num_groups + j], " at candidates[", c, ", ", j, "]");
    TORCH_CHECK_VALUE(s != cpu::kMixtureNegative, "tikmix.mixture_scores: candidates must be >= 0, got ",
                      wp[c * num_groups + j], " at candidates[", c, ", ", j, "]");
    TORCH_CHECK_VALUE(s != cpu::kMixtureBadSum, "tikmix.mixture_scores: each row of candidates must have a finite "
                      "sum > 0, row ", c, " does not");
    TORCH_CHECK(s == cpu::kMixtureOk, "tikmix.mixture_scores: internal error in the draw counts of candidate ", c,
                " (largest-remainder units out of range); please report it");
    for (j = 0; j < num_groups; ++j) {
      TORCH_CHECK_VALUE(!(cnt[j] > 0 && off[j + 1] == off[j]), "tikmix.mixture_scores: candidates[", c, ", ", j,
                        "] > 0 gives domain ", j, " draws, but ids has no rows of domain ", j,
                        "; give it weight 0 or add rows with that id");
    }
  }

  at::Tensor out = at::empty({num_cand, n}, per_sample.options());
  if (num_cand == 0 || n == 0) return out;
  const at::Tensor counts_dev = counts.to(per_sample.device());
  const at::Tensor ps = unit_column_stride(per_sample);
  const at::Tensor rows = plan.rows.contiguous(), offsets = plan.offsets.contiguous();
  cudaError_t err;
  if (ps.scalar_type() == at::kFloat) {
    err = cuda::mixture_scores(ps.data_ptr<float>(), row_stride(ps), n, offsets.data_ptr<int64_t>(),
                               rows.data_ptr<int64_t>(), counts_dev.data_ptr<int64_t>(), num_cand, num_groups, draws,
                               uint64_t(seed), out.data_ptr<float>(), n, stream());
  } else {
    err = cuda::mixture_scores(ps.data_ptr<double>(), row_stride(ps), n, offsets.data_ptr<int64_t>(),
                               rows.data_ptr<int64_t>(), counts_dev.data_ptr<int64_t>(), num_cand, num_groups, draws,
                               uint64_t(seed), out.data_ptr<double>(), n, stream());
  }
  C10_CUDA_CHECK(err);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tikmix, CUDA, m) {
  // sketch_kron(a[N,T,i], g[N,T,o], k_in, k_out, seed, layer) -> [N, k_out·k_in] float32
  m.impl("sketch_kron", &sketch_kron_cuda);
  // segment_sum / segment_mean(x[N,k], ids[N], num_groups) -> [G,k], contract chunk order (bit-identical to CPU)
  m.impl("segment_sum", &segment_sum_cuda);
  m.impl("segment_mean", &segment_mean_cuda);
  // group_influence(train[N,k], ids[N], G, target[n,k], precond[k,k]?) -> (S[n,G], per_sample[N,n])
  m.impl("group_influence", &group_influence_cuda);
  // mixture_scores(per_sample[N,n], ids[N], candidates[C,G], draws, seed) -> [C,n] (bit-identical to CPU)
  m.impl("mixture_scores", &mixture_scores_cuda);
}

}  // namespace tikmix::binding
