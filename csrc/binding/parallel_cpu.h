// The parallel loop handed to the torch-free CPU kernels (csrc/include/tikmix/*_kernels.h): at::parallel_for on
// torch's intra-op threads. It is parallel because _C is compiled with OpenMP (CMakeLists.txt); the kernels' plans
// depend on the shapes only, so the thread count never changes a result bit.
#pragma once
#include <ATen/Parallel.h>

#include <cstdint>

namespace tikmix::binding {

struct AtenParallelFor {
  template <class Body>
  void operator()(int64_t begin, int64_t end, int64_t grain, const Body& body) const {
    at::parallel_for(begin, end, grain, body);
  }
};

}  // namespace tikmix::binding
