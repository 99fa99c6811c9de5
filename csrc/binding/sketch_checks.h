// Input checks of the sketch family, shared by the CPU and CUDA implementations.
// Every message names the argument and what was expected (TORCH_CHECK_VALUE → Python ValueError).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <optional>

#include "tikmix/rng.h"

namespace tikmix::binding {

inline void check_k(int64_t k, const char* name = "k") {
  TORCH_CHECK_VALUE(k >= 1 && k < kMaxK, "tikmix: ", name, " must be in [1, 2^26), got ", k);
}

inline void check_seed(int64_t seed) {
  TORCH_CHECK_VALUE(seed >= 0, "tikmix: seed must be a non-negative integer, got ", seed);
}

inline void check_rows(int64_t offset, int64_t rows, const char* what) {
  TORCH_CHECK_VALUE(offset >= 0, "tikmix: offset must be >= 0, got ", offset);
  TORCH_CHECK_VALUE(rows >= 0 && uint64_t(offset) + uint64_t(rows) <= kMaxRows, "tikmix: ", what,
                    " covers rows [", offset, ", ", offset + rows, ") of R, beyond the RNG contract's limit 2^44");
}

inline void check_sketch_inputs(const at::Tensor& x, int64_t k, int64_t seed, int64_t offset,
                                const std::optional<at::Tensor>& scale) {
  TORCH_CHECK_VALUE(x.dim() == 2, "tikmix.sketch: x must be 2-D [N, d], got shape ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                   "tikmix.sketch: x must be float32, bfloat16 or float16, got ", dt);
  check_k(k);
  check_seed(seed);
  check_rows(offset, x.size(1), "x");
  if (scale.has_value()) {
    const auto& s = *scale;
    TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == x.size(1), "tikmix.sketch: scale must be 1-D of length d=",
                      x.size(1), ", got shape ", s.sizes());
    TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, "tikmix.sketch: scale must be float32, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.device() == x.device(), "tikmix.sketch: scale is on ", s.device(), " but x is on ",
                      x.device());
  }
}

inline void check_sketch_out(const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(out.dim() == 2 && out.size(0) == x.size(0),
                    "tikmix.sketch_accumulate_: out must be [N, k] with N=", x.size(0), ", got shape ", out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat, "tikmix.sketch_accumulate_: out must be float32, got ",
                   out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == x.device(), "tikmix.sketch_accumulate_: out is on ", out.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_VALUE(out.is_contiguous(), "tikmix.sketch_accumulate_: out must be contiguous");
}

}  // namespace tikmix::binding
