// Test driver for csrc/philox.h built with a chosen -march (tests/test_philox_isa.py): prints which vector
// path uniform_block took (lanes per register: 8 AVX-512, 4 AVX2, 1 scalar), then, for each "seed first
// count" line on stdin (count <= kNoiseBlock), the count uniforms as raw float32 on stdout.
#include <cstdio>

#include "philox.h"

int main() {
#if defined(__AVX512F__) || defined(__AVX2__)
  const int lanes = l0fast::PhiloxLanes::kBlocks;
#else
  const int lanes = 1;
#endif
  std::fwrite(&lanes, sizeof lanes, 1, stdout);
  alignas(64) static float scratch[l0fast::kNoiseBlock + 8];
  unsigned long long seed, first;
  long long count;
  while (std::scanf("%llu %llu %lld", &seed, &first, &count) == 3) {
    const float* u = l0fast::uniform_block(seed, first, count, scratch);
    std::fwrite(u, sizeof(float), static_cast<size_t>(count), stdout);
  }
  return 0;
}
