// Input checks of the reduce family (sketch_kron, segment_sum/mean, group_influence, mixture_scores), shared by the
// CPU, CUDA and Meta implementations (meta tensors, FakeTensor and torch.compile get the real kernels' messages).
// One check_<op>_inputs per op covers metadata (rank, shape, dtype, device, scalar arguments; sizes read as SymInts,
// see sketch_checks.h); every message names the argument and what was expected (TORCH_CHECK_VALUE → ValueError,
// TORCH_CHECK_TYPE → TypeError). Value checks (ids in range, finite inputs) need the data: the CPU path fuses them
// into its passes (segment_plan, first_nonfinite) and reports through fail_bad_id / fail_nonfinite; other devices
// can call the ATen versions check_ids_values / check_finite below (one host sync each), with the same messages.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <optional>

#include "sketch_checks.h"
#include "tikmix/reduce_kernels.h"
#include "tikmix/rng.h"

namespace tikmix::binding {

// num_groups must be below this: ids are int64 or int32, and the group offsets are allocated before any id is read.
constexpr int64_t kMaxGroups = int64_t(1) << 31;

inline bool is_float_or_double(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

inline void check_same_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  check_defined(op, ref, ref_name);
  check_defined(op, t, name);
  TORCH_CHECK_VALUE(t.device() == ref.device(), "tikmix.", op, ": ", name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device(), "; all tensors must be on one device");
}

// A 2-D float32/float64 matrix named `name`, `shape` describing it for the message (e.g. "[N, k]").
inline void check_float_matrix(const char* op, const at::Tensor& t, const char* name, const char* shape) {
  check_defined(op, t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, "tikmix.", op, ": ", name, " must be 2-D ", shape, ", got shape ", t.sym_sizes());
  TORCH_CHECK_TYPE(is_float_or_double(t), "tikmix.", op, ": ", name, " must be float32 or float64, got ",
                   t.scalar_type());
}

// ids: 1-D int64 or int32 of length n, on the device of `like`.
inline void check_ids(const char* op, const at::Tensor& ids, const c10::SymInt& n, const at::Tensor& like,
                      const char* like_name) {
  check_same_device(op, ids, "ids", like, like_name);
  TORCH_CHECK_VALUE(ids.dim() == 1, "tikmix.", op, ": ids must be 1-D [N], got shape ", ids.sym_sizes());
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, "tikmix.", op,
                   ": ids must be int64 or int32, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(holds(ids.sym_size(0).sym_eq(n)), "tikmix.", op, ": ids must have one entry per row of ",
                    like_name, " (N=", n, "), got length ", ids.sym_size(0));
}

inline void check_num_groups(const char* op, int64_t num_groups) {
  TORCH_CHECK_VALUE(num_groups >= 1 && num_groups < kMaxGroups, "tikmix.", op,
                    ": num_groups must be in [1, 2^31), got ", num_groups);
}

// A host buffer of `count` elements of `bytes` each, sized by the argument `arg`, could not be allocated: raise
// torch.OutOfMemoryError naming that argument (instead of a bare std::bad_alloc).
[[noreturn]] inline void fail_out_of_memory(const char* op, const char* what, int64_t count, int64_t bytes,
                                            const char* arg) {
  TORCH_CHECK_WITH(OutOfMemoryError, false, "tikmix.", op, ": out of memory allocating ", what, " (", count, " × ",
                   bytes, " bytes, sized by ", arg, "); use a smaller ", arg);
  __builtin_unreachable();
}

// `range` names the bound in the message, e.g. "num_groups" or "G = candidates.size(1)".
[[noreturn]] inline void fail_bad_id(const char* op, int64_t index, int64_t value, int64_t num_groups,
                                     const char* range) {
  TORCH_CHECK_VALUE(false, "tikmix.", op, ": ids[", index, "] = ", value, " is out of range; ids must be in [0, ",
                    range, ") = [0, ", num_groups, ")");
  __builtin_unreachable();
}

// `index` is the row-major linear index into the [rows, cols] tensor `name`.
[[noreturn]] inline void fail_nonfinite(const char* op, const char* name, int64_t index, int64_t cols, double value) {
  const int64_t r = cols > 0 ? index / cols : 0, c = cols > 0 ? index % cols : 0;
  TORCH_CHECK_VALUE(false, "tikmix.", op, ": ", name, " must be finite, got ", value, " at ", name, "[", r, ", ", c,
                    "]");
  __builtin_unreachable();
}

// ATen value checks (any device; one sync each). The CPU implementation uses its fused scans instead.
inline void check_ids_values(const char* op, const at::Tensor& ids, int64_t num_groups, const char* range) {
  if (ids.numel() == 0) return;
  const at::Tensor bad = at::logical_or(ids < 0, ids >= num_groups);
  if (bad.any().item<bool>()) {
    const int64_t index = bad.nonzero().select(1, 0).min().item<int64_t>();
    fail_bad_id(op, index, ids.select(0, index).item<int64_t>(), num_groups, range);
  }
}

inline void check_finite(const char* op, const at::Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  const at::Tensor bad = at::logical_not(at::isfinite(t)).reshape({-1});
  if (bad.any().item<bool>()) {
    const int64_t index = bad.nonzero().select(1, 0).min().item<int64_t>();
    fail_nonfinite(op, name, index, t.dim() == 2 ? t.size(1) : 1, t.reshape({-1}).select(0, index).item<double>());
  }
}

// group_influence's sums [G, n] (S transposed): with finite inputs a sum can still exceed the dtype's range; raise
// instead of returning ±inf. ATen ops (any device; S is small; one sync).
inline void check_group_sums_finite(const at::Tensor& sums) {
  if (sums.numel() == 0) return;
  const at::Tensor bad = at::logical_not(at::isfinite(sums)).reshape({-1});
  if (!bad.any().item<bool>()) return;
  const int64_t hit = bad.nonzero().select(1, 0).min().item<int64_t>(), n = sums.size(1);
  const int64_t j = hit / n, i = hit % n;
  TORCH_CHECK_VALUE(false, "tikmix.group_influence: S overflowed to ", sums.reshape({-1}).select(0, hit).item<double>(),
                    " at S[", i, ", ", j, "] (the sum of per_sample[:, ", i, "] over domain ", j, "'s rows) although "
                    "train, target and precond are finite; the sum exceeds the range of ", sums.scalar_type(),
                    ": rescale the inputs", sums.scalar_type() == at::kFloat ? " or use float64" : "");
  __builtin_unreachable();
}

// sketch_kron(a[N,T,i], g[N,T,o], k_in, k_out, seed, layer)
inline void check_sketch_kron_inputs(const at::Tensor& a, const at::Tensor& g, int64_t k_in, int64_t k_out,
                                     int64_t seed, int64_t layer) {
  constexpr const char* op = "sketch_kron";
  check_same_device(op, g, "g", a, "a");
  TORCH_CHECK_VALUE(a.dim() == 3, "tikmix.sketch_kron: a must be 3-D [N, T, in_features], got shape ", a.sym_sizes());
  TORCH_CHECK_VALUE(g.dim() == 3, "tikmix.sketch_kron: g must be 3-D [N, T, out_features], got shape ", g.sym_sizes());
  const auto dt = a.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                   "tikmix.sketch_kron: a must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_TYPE(g.scalar_type() == dt, "tikmix.sketch_kron: g must have a's dtype ", dt, ", got ",
                   g.scalar_type());
  TORCH_CHECK_VALUE(holds(g.sym_size(0).sym_eq(a.sym_size(0))) && holds(g.sym_size(1).sym_eq(a.sym_size(1))),
                    "tikmix.sketch_kron: g must be [N, T, out_features] with a's N=", a.sym_size(0), " and T=",
                    a.sym_size(1), ", got shape ", g.sym_sizes());
  check_k(k_in, "k_in");
  check_k(k_out, "k_out");
  TORCH_CHECK_VALUE(k_in * k_out < kMaxK, "tikmix.sketch_kron: k_in·k_out must be < 2^26, got ", k_in, "·", k_out);
  check_seed(seed);
  TORCH_CHECK_VALUE(layer >= 0, "tikmix.sketch_kron: layer must be a non-negative integer, got ", layer);
  TORCH_CHECK_VALUE(holds(a.sym_size(2).sym_lt(int64_t(kMaxRows))) && holds(g.sym_size(2).sym_lt(int64_t(kMaxRows))),
                    "tikmix.sketch_kron: in/out features must be < 2^44 (RNG contract)");
}

// segment_sum / segment_mean(x[N,k], ids[N], num_groups)
inline void check_segment_inputs(const char* op, const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  check_float_matrix(op, x, "x", "[N, k]");
  check_ids(op, ids, x.sym_size(0), x, "x");
  check_num_groups(op, num_groups);
}

// group_influence(train[N,k], ids[N], num_groups, target[n,k], precond[k,k]?)
inline void check_group_influence_inputs(const at::Tensor& train, const at::Tensor& ids, int64_t num_groups,
                                         const at::Tensor& target, const std::optional<at::Tensor>& precond) {
  constexpr const char* op = "group_influence";
  check_float_matrix(op, train, "train", "[N, k]");
  check_ids(op, ids, train.sym_size(0), train, "train");
  check_num_groups(op, num_groups);
  check_same_device(op, target, "target", train, "train");
  if (precond.has_value()) check_same_device(op, *precond, "precond", train, "train");
  TORCH_CHECK_VALUE(target.dim() == 2, "tikmix.group_influence: target must be 2-D [n, k], got shape ",
                    target.sym_sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == train.scalar_type(), "tikmix.group_influence: target must have train's dtype ",
                   train.scalar_type(), ", got ", target.scalar_type());
  TORCH_CHECK_VALUE(holds(target.sym_size(1).sym_eq(train.sym_size(1))),
                    "tikmix.group_influence: target must be [n, k] with train's k=", train.sym_size(1), ", got shape ",
                    target.sym_sizes());
  if (precond.has_value()) {
    const at::Tensor& p = *precond;
    const c10::SymInt k = train.sym_size(1);
    TORCH_CHECK_VALUE(p.dim() == 2 && holds(p.sym_size(0).sym_eq(k)) && holds(p.sym_size(1).sym_eq(k)),
                      "tikmix.group_influence: precond must be [k, k] with train's k=", k, ", got shape ",
                      p.sym_sizes());
    TORCH_CHECK_TYPE(p.scalar_type() == train.scalar_type(), "tikmix.group_influence: precond must have train's dtype ",
                     train.scalar_type(), ", got ", p.scalar_type());
  }
}

// mixture_scores(per_sample[N,n], ids[N], candidates[C,G], draws, seed)
inline void check_mixture_scores_inputs(const at::Tensor& per_sample, const at::Tensor& ids,
                                        const at::Tensor& candidates, int64_t draws, int64_t seed) {
  constexpr const char* op = "mixture_scores";
  check_same_device(op, candidates, "candidates", per_sample, "per_sample");
  check_float_matrix(op, per_sample, "per_sample", "[N, n]");
  check_ids(op, ids, per_sample.sym_size(0), per_sample, "per_sample");
  check_float_matrix(op, candidates, "candidates", "[C, G]");
  TORCH_CHECK_VALUE(holds(candidates.sym_size(1).sym_ge(1)) && holds(candidates.sym_size(1).sym_lt(kMixtureMaxGroups)),
                    "tikmix.mixture_scores: candidates must have G in [1, 2^20) columns (one weight per domain), "
                    "got shape ", candidates.sym_sizes());
  TORCH_CHECK_VALUE(draws >= 1 && draws < kMixtureMaxDraws, "tikmix.mixture_scores: draws must be in [1, 2^31), got ",
                    draws);
  check_seed(seed);
}

}  // namespace tikmix::binding
