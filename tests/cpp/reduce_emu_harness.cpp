// Runs the CUDA segment-sum and mixture_scores kernels (csrc/cuda/segment.cu, mixture.cu) on the CPU through
// tests/cpp/cuda_emu.h and compares them bit for bit with the CPU kernels of csrc/cpu (linked in), which follow the
// same contract order (reduce_kernels.h). The segment plan is built here the way csrc/binding/reduce_cuda.cpp builds
// it with ATen: rows sorted by group (stable), segments = maximal runs with one group and one 4096-row chunk,
// group_seg[j] = first segment at or after offsets[j]. Prints "CHECK emu_<name> <failures> <entries>".
#include "../../csrc/cuda/mixture.cu"
#include "../../csrc/cuda/segment.cu"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "tikmix/reduce_kernels.h"

namespace {

template <typename T>
void check_segments(const std::string& name, int64_t n, int64_t k, int64_t groups, int64_t ld_pad, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0, 1);
  const int64_t ldx = k + ld_pad;
  std::vector<T> x(static_cast<size_t>(std::max<int64_t>(1, n * ldx)));
  for (auto& v : x) v = T(normal(gen) * std::exp(4 * normal(gen)));  // wide magnitudes: order matters
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = int64_t(gen() % uint64_t(std::max<int64_t>(1, groups - 1)));  // last group empty
  std::vector<int64_t> offsets(static_cast<size_t>(groups + 1)), rows(static_cast<size_t>(n));
  if (tikmix::cpu::segment_plan(ids.data(), n, groups, offsets.data(), rows.data()) >= 0) std::abort();
  // seg_start / group_seg as reduce_cuda.cpp computes them
  std::vector<int64_t> sorted(static_cast<size_t>(n)), seg_start;
  for (int64_t j = 0; j < groups; ++j)
    for (int64_t p = offsets[size_t(j)]; p < offsets[size_t(j + 1)]; ++p) sorted[size_t(p)] = j;
  for (int64_t p = 0; p < n; ++p)
    if (p == 0 || sorted[size_t(p)] != sorted[size_t(p - 1)] ||
        rows[size_t(p)] / tikmix::kSegmentChunkRows != rows[size_t(p - 1)] / tikmix::kSegmentChunkRows)
      seg_start.push_back(p);
  std::vector<int64_t> group_seg(static_cast<size_t>(groups + 1));
  for (int64_t j = 0; j <= groups; ++j)
    group_seg[size_t(j)] = std::lower_bound(seg_start.begin(), seg_start.end(), offsets[size_t(j)]) - seg_start.begin();
  const int64_t segments = int64_t(seg_start.size());
  int64_t fail = 0;
  for (int mean = 0; mean < 2; ++mean) {
    std::vector<T> partial(size_t(std::max<int64_t>(1, segments * k)), T(NAN));
    std::vector<T> out(size_t(groups * k), T(NAN));
    fail += tikmix::cuda::segment_partials(x.data(), ldx, k, rows.data(), n, seg_start.data(), segments,
                                           partial.data(), nullptr) != cudaSuccess;
    fail += tikmix::cuda::segment_combine(partial.data(), k, group_seg.data(), offsets.data(), groups, mean != 0,
                                          out.data(), k, nullptr) != cudaSuccess;
    std::vector<T> ref(static_cast<size_t>(k));
    for (int64_t j = 0; j < groups; ++j) {
      tikmix::cpu::segment_reduce(x.data(), ldx, offsets.data(), rows.data(), j, 0, k, mean != 0, ref.data());
      for (int64_t c = 0; c < k; ++c) fail += std::memcmp(&ref[size_t(c)], &out[size_t(j * k + c)], sizeof(T)) != 0;
    }
  }
  std::printf("CHECK emu_%s %lld %lld\n", name.c_str(), (long long)fail, (long long)(2 * groups * k));
}

template <typename T>
void check_mixture(const std::string& name, int64_t n_rows, int64_t n, int64_t groups, int64_t cands, int64_t draws,
                   uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0, 1);
  std::vector<T> per(static_cast<size_t>(n_rows * n));
  for (auto& v : per) v = T(normal(gen) * std::exp(3 * normal(gen)));
  std::vector<int64_t> ids(static_cast<size_t>(n_rows));
  for (auto& id : ids) id = int64_t(gen() % uint64_t(groups));
  std::vector<int64_t> offsets(static_cast<size_t>(groups + 1)), rows(static_cast<size_t>(n_rows));
  if (tikmix::cpu::segment_plan(ids.data(), n_rows, groups, offsets.data(), rows.data()) >= 0) std::abort();
  std::vector<double> w(static_cast<size_t>(cands * groups));
  std::uniform_real_distribution<double> unif(0, 1);
  for (auto& v : w) v = unif(gen) < 0.2 ? 0.0 : unif(gen);
  for (int64_t c = 0; c < cands; ++c) w[size_t(c * groups)] = 0.5;  // no all-zero row
  std::vector<int64_t> counts(static_cast<size_t>(cands * groups));
  int64_t fail = 0, bad = -1;
  for (int64_t c = 0; c < cands; ++c) {
    fail += tikmix::cpu::mixture_counts(&w[size_t(c * groups)], groups, draws, &counts[size_t(c * groups)], &bad) !=
            tikmix::cpu::kMixtureOk;
    for (int64_t j = 0; j < groups; ++j)
      if (offsets[size_t(j + 1)] == offsets[size_t(j)]) counts[size_t(c * groups + j)] = 0;  // (not in these data)
  }
  std::vector<T> out(size_t(cands * n), T(NAN)), ref(static_cast<size_t>(cands * n));
  std::vector<double> acc(static_cast<size_t>(n));
  fail += tikmix::cuda::mixture_scores(per.data(), n, n, offsets.data(), rows.data(), counts.data(), cands, groups,
                                       draws, seed, out.data(), n, nullptr) != cudaSuccess;
  tikmix::cpu::mixture_scores(per.data(), n, n, offsets.data(), rows.data(), counts.data(), groups, draws, seed, 0,
                              cands, acc.data(), ref.data(), n);
  for (size_t i = 0; i < out.size(); ++i) fail += std::memcmp(&out[i], &ref[i], sizeof(T)) != 0;
  std::printf("CHECK emu_%s %lld %lld\n", name.c_str(), (long long)fail, (long long)(cands * n));
}

}  // namespace

int main() {
  check_segments<float>("segment_f32_small", 10, 3, 5, 0, 1);
  check_segments<float>("segment_f32_chunks", 9000, 5, 7, 2, 2);
  check_segments<double>("segment_f64_chunks", 13000, 4, 300, 0, 3);
  check_segments<float>("segment_f32_one_row", 1, 1, 1, 0, 4);
  check_mixture<float>("mixture_f32", 3000, 5, 4, 20, 1000, 5);
  check_mixture<double>("mixture_f64", 500, 3, 9, 7, 77, 6);
  check_mixture<float>("mixture_one_draw", 50, 2, 3, 5, 1, 7);
  return 0;
}
