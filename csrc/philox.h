// Philox4x32-10 counter-based generator (Salmon et al., SC'11, "Random123"),
// laid out exactly as `triton.language.randint4x(seed, counter)` with an int64
// counter: state (lo32(counter), hi32(counter), 0, 0), key (lo32(seed), hi32(seed)).
//
// Element e of the l0fast noise stream is word (e mod 4) of the block at
// counter (e div 4), mapped to [0, 1) as `triton.language.rand` maps a word,
// so one Philox call serves four gates.
#pragma once
#include <cstdint>

namespace l0fast {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
// Largest float scale with (2^31 - 1) * scale < 1 (triton's uint_to_uniform_float).
constexpr float kUint31ToUnit = 4.6566127342e-10f;
// Uniforms generated per scratch block by `uniform_block`.
constexpr int64_t kNoiseBlock = 1024;

// The four 32-bit output words of Philox4x32-10 for a 64-bit counter and key.
static inline void philox4x32(uint64_t seed, uint64_t counter, uint32_t words[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter);
  uint32_t c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t prod_b = static_cast<uint64_t>(kPhiloxRoundB) * c2;
    const uint64_t prod_a = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    const uint32_t next_c0 = static_cast<uint32_t>(prod_b >> 32) ^ c1 ^ k0;
    const uint32_t next_c2 = static_cast<uint32_t>(prod_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(prod_b);
    c3 = static_cast<uint32_t>(prod_a);
    c0 = next_c0;
    c2 = next_c2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}

// Uniform float in [0, 1) from one 32-bit word, as triton.language.rand does.
static inline float uint32_to_unit_float(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUint31ToUnit;
}

// Uniforms of stream elements [first, first + count), count <= kNoiseBlock,
// written into `scratch` (kNoiseBlock + 8 floats); returns the first one.
static inline const float* uniform_block(uint64_t seed, uint64_t first, int64_t count,
                                         float* scratch) {
  const uint64_t counter0 = first >> 2;
  const int64_t skip = static_cast<int64_t>(first & 3);
  const int64_t n_counters = (skip + count + 3) >> 2;
  for (int64_t k = 0; k < n_counters; ++k) {
    uint32_t words[4];
    philox4x32(seed, counter0 + static_cast<uint64_t>(k), words);
    for (int j = 0; j < 4; ++j) scratch[4 * k + j] = uint32_to_unit_float(words[j]);
  }
  return scratch + skip;
}

}  // namespace l0fast
