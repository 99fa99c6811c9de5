// Input checks of the sketch family: the one definition, called by the CPU, CUDA and Meta implementations (so
// meta tensors, FakeTensor and torch.compile reject bad input at trace time with the real kernel's message).
// Every message names the argument and what was expected (TORCH_CHECK_VALUE → ValueError, TORCH_CHECK_TYPE →
// TypeError). Sizes are read as SymInts: under torch.compile with dynamic shapes they are symbolic, and a size
// condition becomes a runtime assertion (expect_true) instead of specialising the graph.
#pragma once
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/core/SymBool.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>
#include <cstdint>
#include <optional>
#include <utility>

#include "tikmix/rng.h"

namespace tikmix::binding {

// A size condition: exact for real and meta tensors; recorded as an assertion for symbolic (traced) sizes.
inline bool holds(const c10::SymBool& condition) { return condition.expect_true(__FILE__, __LINE__); }

// The raw ops' argument parser lets None through for a Tensor argument (an undefined tensor): name it.
inline void check_defined(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), "tikmix.", op, ": ", name, " must be a tensor, got None");
}

inline void check_k(const c10::SymInt& k, const char* name = "k") {
  TORCH_CHECK_VALUE(holds(k.sym_ge(1)) && holds(k.sym_lt(kMaxK)), "tikmix: ", name, " must be in [1, 2^26), got ", k);
}

inline void check_seed(int64_t seed) {
  TORCH_CHECK_VALUE(seed >= 0, "tikmix: seed must be a non-negative integer, got ", seed);
}

inline void check_rows(int64_t offset, const c10::SymInt& rows, const char* what) {
  TORCH_CHECK_VALUE(offset >= 0, "tikmix: offset must be >= 0, got ", offset);
  TORCH_CHECK_VALUE(uint64_t(offset) <= kMaxRows && holds(rows.sym_le(int64_t(kMaxRows) - offset)), "tikmix: ", what,
                    " covers rows [", offset, ", ", rows + offset, ") of R, beyond the RNG contract's limit 2^44");
}

// projection(rows, k, seed, offset): scalars only (also called by the Python fake: tikmix_ext._C).
inline void check_projection_inputs(int64_t rows, int64_t k, int64_t seed, int64_t offset) {
  check_k(k);
  check_seed(seed);
  TORCH_CHECK_VALUE(rows >= 0, "tikmix.projection: rows must be >= 0, got ", rows);
  check_rows(offset, rows, "projection");
}

inline void check_sketch_inputs(const at::Tensor& x, const c10::SymInt& k, int64_t seed, int64_t offset,
                                const std::optional<at::Tensor>& scale) {
  check_defined("sketch", x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "tikmix.sketch: x must be 2-D [N, d], got shape ", x.sym_sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                   "tikmix.sketch: x must be float32, bfloat16 or float16, got ", dt);
  check_k(k);
  check_seed(seed);
  check_rows(offset, x.sym_size(1), "x");
  if (scale.has_value()) {
    const auto& s = *scale;
    TORCH_CHECK_VALUE(s.device() == x.device(), "tikmix.sketch: scale is on ", s.device(), " but x is on ",
                      x.device());
    TORCH_CHECK_VALUE(s.dim() == 1 && holds(s.sym_size(0).sym_eq(x.sym_size(1))),
                      "tikmix.sketch: scale must be 1-D of length d=", x.sym_size(1), ", got shape ", s.sym_sizes());
    TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, "tikmix.sketch: scale must be float32, got ", s.scalar_type());
  }
}

// sketch_accumulate_(out[N,k], x[N,d], seed, offset, scale[d]?): all metadata checks, in one place.
inline void check_sketch_accumulate_inputs(const at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                                           const std::optional<at::Tensor>& scale) {
  check_defined("sketch_accumulate_", out, "out");
  check_defined("sketch_accumulate_", x, "x");
  TORCH_CHECK_VALUE(out.dim() == 2, "tikmix.sketch_accumulate_: out must be 2-D [N, k], got shape ", out.sym_sizes());
  TORCH_CHECK_VALUE(out.device() == x.device(), "tikmix.sketch_accumulate_: out is on ", out.device(),
                    " but x is on ", x.device());
  check_sketch_inputs(x, out.sym_size(1), seed, offset, scale);
  TORCH_CHECK_VALUE(holds(out.sym_size(0).sym_eq(x.sym_size(0))),
                    "tikmix.sketch_accumulate_: out must be [N, k] with N=", x.sym_size(0), ", got shape ",
                    out.sym_sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat, "tikmix.sketch_accumulate_: out must be float32, got ",
                   out.scalar_type());
  TORCH_CHECK_VALUE(holds(out.sym_is_contiguous()), "tikmix.sketch_accumulate_: out must be contiguous");
}

// [first byte, last byte + 1) of the memory t's elements occupy (strides are never negative in torch).
inline std::pair<uintptr_t, uintptr_t> address_span(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t i = 0; i < t.dim(); ++i) last += (t.size(i) - 1) * t.stride(i);
  const auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + uintptr_t((last + 1) * int64_t(t.element_size()))};
}

// True when t may share memory with out: ATen's exact verdict for one storage, otherwise (an irregular layout, or
// two torch storages over one buffer, e.g. two numpy views) whether their address spans intersect — conservative.
inline bool may_overlap(const at::Tensor& out, const at::Tensor& t) {
  if (out.numel() == 0 || t.numel() == 0) return false;
  const at::MemOverlapStatus status = at::get_overlap_status(out, t);
  if (status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial) return true;
  const auto a = address_span(out), b = address_span(t);
  return a.first < b.second && b.first < a.second;
}

// Real kernels only (needs real storage): out is written while x and scale are read, so they must not share memory
// with it; a kernel would otherwise read partly updated values and return wrong numbers.
inline void check_sketch_accumulate_no_overlap(const at::Tensor& out, const at::Tensor& x,
                                               const std::optional<at::Tensor>& scale) {
  TORCH_CHECK_VALUE(!may_overlap(out, x), "tikmix.sketch_accumulate_: x overlaps out in memory (a view of out, or "
                    "out itself); out is written while x is read, so pass a copy: x.clone()");
  TORCH_CHECK_VALUE(!(scale.has_value() && may_overlap(out, *scale)), "tikmix.sketch_accumulate_: scale overlaps out "
                    "in memory; out is written while scale is read, so pass a copy: scale.clone()");
}

}  // namespace tikmix::binding
