// CPU implementations of the reduce family: checks (reduce_checks.h), then the torch-free kernels of csrc/cpu
// (reduce_kernels.h, which also states the numerical contracts), run as at::parallel_for tasks whose split depends
// on the shapes only, so results never depend on the thread count. The dense products use tikmix's own kernels
// (rowdot, kron_outer) rather than BLAS: MKL's sgemm changes its summation order with the
// thread count (measured: different bits at 1, 2 and 3 threads for small-output shapes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <new>
#include <tuple>
#include <vector>

#include "parallel_cpu.h"
#include "reduce_checks.h"
#include "tikmix/reduce_kernels.h"
#include "tikmix/rng.h"
#include "tikmix/sketch_kernels.h"

namespace tikmix::binding {
namespace {

constexpr int64_t kKronChunkElems = int64_t(1) << 22;  // fp32 elements of a or g converted per sample chunk
constexpr int64_t kSegmentMaxStrip = 2048;  // columns per segment task, at most (column split never changes bits)
constexpr int64_t kSegmentTasks = 32;       // segment tasks wanted per call (enough for 8 threads × 4)
constexpr int64_t kScanRows = 1024;                    // rows per non-finite scan task
constexpr int64_t kDotTile = 64;                       // rowdot task: 64 rows × 64 targets
// Multiply-adds per parallel chunk, at least (≈ 0.3 ms on one core): a fork for less costs more than it saves, and
// far more on a loaded machine, where a descheduled thread holds up the whole region.
constexpr int64_t kMinTaskWork = int64_t(1) << 20;

// The counting sort of rows by group (validates ids: range errors name the first offending entry).
struct SegmentPlan {
  std::vector<int64_t> offsets, rows;
  int64_t count(int64_t j) const { return offsets[size_t(j) + 1] - offsets[size_t(j)]; }
};

SegmentPlan make_plan(const char* op, const at::Tensor& ids, int64_t num_groups, const char* range) {
  const at::Tensor c = ids.contiguous();
  const int64_t n = c.numel();
  SegmentPlan plan;
  try {
    plan.offsets.resize(size_t(num_groups) + 1);
    plan.rows.resize(size_t(n));
  } catch (const std::bad_alloc&) {
    fail_out_of_memory(op, "the group offsets", num_groups + 1, 8, "num_groups");
  }
  int64_t bad;
  if (c.scalar_type() == at::kLong) {
    bad = cpu::segment_plan(c.data_ptr<int64_t>(), n, num_groups, plan.offsets.data(), plan.rows.data());
  } else {
    bad = cpu::segment_plan(c.data_ptr<int32_t>(), n, num_groups, plan.offsets.data(), plan.rows.data());
  }
  if (bad >= 0) fail_bad_id(op, bad, c.select(0, bad).item<int64_t>(), num_groups, range);
  return plan;
}

// A 2-D view whose columns have stride 1 (copied only when they do not); rows may be strided.
at::Tensor unit_column_stride(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

// Row stride usable for pointer arithmetic (a size-1 dimension may carry any stride).
int64_t row_stride(const at::Tensor& t) { return t.size(0) <= 1 ? t.size(1) : t.stride(0); }

// segment sums of m[N,k] into out[G,k] (contiguous), contract order; parallel over (group, column strip).
template <typename T>
void segment_into(const at::Tensor& m, const SegmentPlan& plan, int64_t num_groups, bool mean, at::Tensor& out) {
  const int64_t k = m.size(1);
  if (k == 0 || num_groups == 0) return;
  const at::Tensor x = unit_column_stride(m);
  const T* xp = x.data_ptr<T>();
  const int64_t ldx = row_stride(x);
  T* outp = out.data_ptr<T>();
  // Tasks = (group, column strip). Strips are as wide as possible (each row read is one contiguous run) while
  // giving ~kSegmentTasks tasks; a function of the shapes only (and columns are independent anyway).
  const int64_t want = std::max<int64_t>(1, (kSegmentTasks + num_groups - 1) / num_groups);
  int64_t width = std::clamp<int64_t>((k + want - 1) / want, std::min<int64_t>(k, 64), kSegmentMaxStrip);
  width = std::min(k, (width + 15) / 16 * 16);
  const int64_t strips = (k + width - 1) / width;
  const int64_t tasks = num_groups * strips;
  // Aim for ≥ 32K summed elements per parallel chunk.
  const int64_t work = std::max<int64_t>(1, x.size(0) * k);
  const int64_t grain = std::max<int64_t>(1, (tasks * 32768) / work);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j = t / strips, s = t % strips;
      const int64_t c0 = s * width, w = std::min(width, k - c0);
      cpu::segment_reduce(xp, ldx, plan.offsets.data(), plan.rows.data(), j, c0, w, mean, outp + j * k + c0);
    }
  });
}

at::Tensor segment_impl(const char* op, const at::Tensor& x, const at::Tensor& ids, int64_t num_groups, bool mean) {
  check_segment_inputs(op, x, ids, num_groups);
  const SegmentPlan plan = make_plan(op, ids, num_groups, "num_groups");
  at::Tensor out = at::zeros({num_groups, x.size(1)}, x.options());
  if (x.scalar_type() == at::kFloat) {
    segment_into<float>(x, plan, num_groups, mean, out);
  } else {
    segment_into<double>(x, plan, num_groups, mean, out);
  }
  return out;
}

at::Tensor segment_sum_cpu(const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  return segment_impl("segment_sum", x, ids, num_groups, /*mean=*/false);
}

at::Tensor segment_mean_cpu(const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  return segment_impl("segment_mean", x, ids, num_groups, /*mean=*/true);
}

// Row-major linear index of the first NaN/±inf of the 2-D tensor t, or -1 (parallel over fixed row blocks).
template <typename T>
int64_t find_nonfinite_typed(const at::Tensor& t) {
  const at::Tensor x = unit_column_stride(t);
  const int64_t rows = x.size(0), cols = x.size(1), ld = row_stride(x);
  if (rows == 0 || cols == 0) return -1;
  const T* p = x.data_ptr<T>();
  const int64_t blocks = (rows + kScanRows - 1) / kScanRows;
  std::vector<int64_t> first(size_t(blocks), -1);
  at::parallel_for(0, blocks, std::max<int64_t>(1, 65536 / (cols * kScanRows)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r0 = b * kScanRows, nr = std::min(kScanRows, rows - r0);
      const int64_t hit = cpu::first_nonfinite(p + r0 * ld, nr, cols, ld);
      first[size_t(b)] = hit < 0 ? -1 : r0 * cols + hit;
    }
  });
  for (int64_t hit : first)
    if (hit >= 0) return hit;
  return -1;
}

int64_t find_nonfinite(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? find_nonfinite_typed<float>(t) : find_nonfinite_typed<double>(t);
}

// Raises (naming `name` and the first offending entry) if the 2-D tensor t holds a NaN or ±inf.
void require_finite(const char* op, const at::Tensor& t, const char* name) {
  const int64_t hit = find_nonfinite(t);
  if (hit >= 0) {
    const int64_t cols = t.size(1);
    fail_nonfinite(op, name, hit, cols, t.select(0, hit / cols).select(0, hit % cols).item<double>());
  }
}

// ---- dense products in a fixed order ------------------------------------------------------------------------
// out[z, i] = Σ_c a[z, c] · b[i, c] ([rows of a, rows of b], contiguous) in rowdot's fixed order, tiles of
// kDotTile × kDotTile in parallel.
at::Tensor rowdot_product(const at::Tensor& a_in, const at::Tensor& b_in) {
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t za = a.size(0), nb = b.size(0), K = a.size(1);
  at::Tensor out = at::empty({za, nb}, a.options());
  if (za == 0 || nb == 0) return out;
  const int64_t zt = (za + kDotTile - 1) / kDotTile, it = (nb + kDotTile - 1) / kDotTile;
  const int64_t per_task = std::min(kDotTile, za) * std::min(kDotTile, nb) * std::max<int64_t>(K, 1);
  const int64_t grain = (kMinTaskWork + per_task - 1) / per_task;
  at::parallel_for(0, zt * it, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t z0 = (task / it) * kDotTile, i0 = (task % it) * kDotTile;
      const int64_t z1 = std::min(za, z0 + kDotTile), i1 = std::min(nb, i0 + kDotTile);
      if (a.scalar_type() == at::kFloat) {
        cpu::rowdot(a.data_ptr<float>(), K, b.data_ptr<float>(), K, K, z0, z1, i0, i1, out.data_ptr<float>(), nb);
      } else {
        cpu::rowdot(a.data_ptr<double>(), K, b.data_ptr<double>(), K, K, z0, z1, i0, i1, out.data_ptr<double>(), nb);
      }
    }
  });
  return out;
}

// ---- sketch_kron ----------------------------------------------------------------------------------------------
at::Tensor sketch_kron_cpu(const at::Tensor& a, const at::Tensor& g, int64_t k_in, int64_t k_out, int64_t seed,
                           int64_t layer) {
  check_sketch_kron_inputs(a, g, k_in, k_out, seed, layer);
  // No autograd formula (see tikmix_ext/kron.py): keep the ATen calls below out of autograd recording.
  const at::AutoDispatchBelowAutograd below_autograd;
  const int64_t n = a.size(0), t = a.size(1), in_f = a.size(2), out_f = g.size(2);
  at::Tensor out = at::zeros({n, k_out * k_in}, a.options().dtype(at::kFloat));
  if (n == 0 || t == 0 || in_f == 0 || out_f == 0) return out;
  // Ã = a·R_in and g̃ = g·R_out by rowdot against the transposed ±1 tiles R_inᵀ [k_in, i], R_outᵀ [k_out, o]
  // (small: generated once), then Y = g̃ᵀ·Ã per sample (kron_outer, scaled once). Samples go in chunks that bound
  // the fp32 copies of a and g; the chunking, like every plan here, depends on the shapes only.
  auto unit_tile_t = [&](int64_t rows, int64_t k, uint64_t tag) {
    at::Tensor r = at::empty({rows, k}, out.options());
    float* p = r.data_ptr<float>();
    const uint64_t tile_seed = kron_seed(uint64_t(seed), uint64_t(layer), tag);
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / k), [&](int64_t begin, int64_t end) {
      cpu::fill_signs_f32(tile_seed, uint64_t(begin), end - begin, 0, k, 1.0f, p + begin * k, k);
    });
    return r.t().contiguous();
  };
  const at::Tensor r_in_t = unit_tile_t(in_f, k_in, 0), r_out_t = unit_tile_t(out_f, k_out, 1);
  const int64_t chunk = std::max<int64_t>(1, kKronChunkElems / (t * std::max(in_f, out_f)));
  const float scale = cpu::kron_scale(k_in, k_out);
  float* y = out.data_ptr<float>();
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t nc = std::min(chunk, n - n0);
    const at::Tensor a_t = rowdot_product(a.narrow(0, n0, nc).to(at::kFloat).reshape({nc * t, in_f}), r_in_t);
    const at::Tensor g_t = rowdot_product(g.narrow(0, n0, nc).to(at::kFloat).reshape({nc * t, out_f}), r_out_t);
    const float* ap = a_t.data_ptr<float>();
    const float* gp = g_t.data_ptr<float>();
    // Tasks: (sample, block of 8 rows of Y); every element of Y belongs to one task.
    const int64_t pblocks = (k_out + 7) / 8;
    const int64_t grain = std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, t * 8 * k_in));
    at::parallel_for(0, nc * pblocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task / pblocks, p0 = (task % pblocks) * 8, p1 = std::min(k_out, p0 + 8);
        cpu::kron_outer(gp + s * t * k_out, k_out, ap + s * t * k_in, k_in, t, p0, p1, k_in, scale,
                        y + (n0 + s) * k_out * k_in);
      }
    });
  }
  return out;
}

// ---- group_influence ------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> group_influence_cpu(const at::Tensor& train, const at::Tensor& ids,
                                                       int64_t num_groups, const at::Tensor& target,
                                                       const std::optional<at::Tensor>& precond) {
  constexpr const char* op = "group_influence";
  check_group_influence_inputs(train, ids, num_groups, target, precond);
  const at::AutoDispatchBelowAutograd below_autograd;  // the backward is registered in Python
  require_finite(op, target, "target");  // small: scanned directly
  if (precond.has_value()) require_finite(op, *precond, "precond");
  const SegmentPlan plan = make_plan(op, ids, num_groups, "num_groups");
  // per_sample[z, i] = target_i · (P · train_z) = (train · (target · P)ᵀ)[z, i], both products by rowdot.
  const at::Tensor q = precond.has_value() ? rowdot_product(target, precond->t()) : target;
  at::Tensor per_sample = rowdot_product(train, q);
  // train (the large input) is checked through per_sample: with finite target/precond, a NaN/±inf in train_z makes
  // every per_sample[z, :] non-finite (IEEE: it enters each dot product), so one pass over the small output finds
  // the first bad row, and only that row of train is scanned to name the entry. With n = 0, scan train itself.
  if (per_sample.size(1) == 0) {
    require_finite(op, train, "train");
  } else if (const int64_t hit = find_nonfinite(per_sample); hit >= 0) {
    const int64_t z = hit / per_sample.size(1), k = train.size(1);
    const int64_t in_row = find_nonfinite(train.narrow(0, z, 1));
    if (in_row >= 0) fail_nonfinite(op, "train", z * k + in_row, k, train.select(0, z).select(0, in_row).item<double>());
    TORCH_CHECK_VALUE(false, "tikmix.group_influence: per_sample overflowed to ", per_sample.view(-1)[hit].item<double>(),
                      " at per_sample[", z, ", ", hit % per_sample.size(1), "] although train, target and precond are "
                      "finite; rescale the inputs or use float64");
  }
  at::Tensor sums = at::zeros({num_groups, per_sample.size(1)}, per_sample.options());
  if (train.scalar_type() == at::kFloat) {
    segment_into<float>(per_sample, plan, num_groups, /*mean=*/false, sums);
  } else {
    segment_into<double>(per_sample, plan, num_groups, /*mean=*/false, sums);
  }
  check_group_sums_finite(sums);
  return {sums.t().contiguous(), per_sample};
}

// ---- mixture_scores -------------------------------------------------------------------------------------------
at::Tensor mixture_scores_cpu(const at::Tensor& per_sample, const at::Tensor& ids, const at::Tensor& candidates,
                              int64_t draws, int64_t seed) {
  constexpr const char* op = "mixture_scores";
  check_mixture_scores_inputs(per_sample, ids, candidates, draws, seed);
  require_finite(op, per_sample, "per_sample");
  const int64_t num_cand = candidates.size(0), num_groups = candidates.size(1), n = per_sample.size(1);
  const SegmentPlan plan = make_plan(op, ids, num_groups, "G = candidates.size(1)");

  // Draw counts of every candidate (parallel), then report the first failing candidate (deterministic message).
  const at::Tensor w = candidates.to(at::kDouble).contiguous();
  const double* wp = w.data_ptr<double>();
  std::vector<int64_t> counts(size_t(num_cand * num_groups));
  std::vector<int> status(size_t(num_cand), cpu::kMixtureOk);
  std::vector<int64_t> bad(size_t(num_cand), -1);
  at::parallel_for(0, num_cand, std::max<int64_t>(1, 4096 / num_groups), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t* cnt = counts.data() + c * num_groups;
      status[size_t(c)] = cpu::mixture_counts(wp + c * num_groups, num_groups, draws, cnt, &bad[size_t(c)]);
      if (status[size_t(c)] != cpu::kMixtureOk) continue;
      for (int64_t j = 0; j < num_groups; ++j) {
        if (cnt[j] > 0 && plan.count(j) == 0) {
          bad[size_t(c)] = j;
          status[size_t(c)] = -1;  // empty domain with draws
          break;
        }
      }
    }
  });
  for (int64_t c = 0; c < num_cand; ++c) {
    const int s = status[size_t(c)];
    const int64_t j = bad[size_t(c)];
    TORCH_CHECK_VALUE(s != cpu::kMixtureNonFinite, "tikmix.mixture_scores: candidates must be finite, got ",
                      wp[c * num_groups + j], " at candidates[", c, ", ", j, "]");
    TORCH_CHECK_VALUE(s != cpu::kMixtureNegative, "tikmix.mixture_scores: candidates must be >= 0, got ",
                      wp[c * num_groups + j], " at candidates[", c, ", ", j, "]");
    TORCH_CHECK_VALUE(s != cpu::kMixtureBadSum, "tikmix.mixture_scores: each row of candidates must have a finite "
                      "sum > 0, row ", c, " does not");
    TORCH_CHECK(s != cpu::kMixtureInternal, "tikmix.mixture_scores: internal error in the draw counts of candidate ",
                c, " (largest-remainder units out of range); please report it");
    TORCH_CHECK_VALUE(s != -1, "tikmix.mixture_scores: candidates[", c, ", ", j, "] > 0 gives domain ", j,
                      " draws, but ids has no rows of domain ", j,
                      "; give it weight 0 or add rows with that id");
  }

  at::Tensor out = at::empty({num_cand, n}, per_sample.options());
  if (num_cand == 0 || n == 0) return out;
  const at::Tensor ps = unit_column_stride(per_sample);
  const int64_t ld = row_stride(ps);
  // ≥ ~64K row additions per parallel chunk.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, draws * n));
  at::parallel_for(0, num_cand, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(n));
    if (ps.scalar_type() == at::kFloat) {
      cpu::mixture_scores(ps.data_ptr<float>(), ld, n, plan.offsets.data(), plan.rows.data(), counts.data(),
                          num_groups, draws, uint64_t(seed), begin, end, acc.data(), out.data_ptr<float>(), n);
    } else {
      cpu::mixture_scores(ps.data_ptr<double>(), ld, n, plan.offsets.data(), plan.rows.data(), counts.data(),
                          num_groups, draws, uint64_t(seed), begin, end, acc.data(), out.data_ptr<double>(), n);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tikmix, CPU, m) {
  // sketch_kron(a[N,T,i], g[N,T,o], k_in, k_out, seed, layer) -> [N, k_out·k_in] float32
  m.impl("sketch_kron", &sketch_kron_cpu);
  // segment_sum / segment_mean(x[N,k], ids[N], num_groups) -> [G,k], deterministic chunk order
  m.impl("segment_sum", &segment_sum_cpu);
  m.impl("segment_mean", &segment_mean_cpu);
  // group_influence(train[N,k], ids[N], G, target[n,k], precond[k,k]?) -> (S[n,G], per_sample[N,n])
  m.impl("group_influence", &group_influence_cpu);
  // mixture_scores(per_sample[N,n], ids[N], candidates[C,G], draws, seed) -> [C,n]
  m.impl("mixture_scores", &mixture_scores_cpu);
}

}  // namespace tikmix::binding
