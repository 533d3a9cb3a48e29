// Philox4x32-10 counter-based generator (Salmon et al., SC'11, "Random123"),
// laid out exactly as `triton.language.randint4x(seed, counter)` with an int64
// counter: state (lo32(counter), hi32(counter), 0, 0), key (lo32(seed), hi32(seed)).
//
// Element e of the l0fast noise stream is word (e mod 4) of the block at
// counter (e div 4), mapped to [0, 1) as `triton.language.rand` maps a word,
// so one Philox call serves four gates.  With AVX-512, eight blocks run at
// once in the lanes of a vector (`uniforms_x8`), bit for bit the scalar ones.
#pragma once
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

#if defined(__AVX512F__)
// Uniforms of the eight blocks at counters counter .. counter + 7, as 32 floats
// in stream order, the same bits as eight philox4x32 + uint32_to_unit_float.
// Each 64-bit lane holds one block's 32-bit word in its low half: vpmuludq
// reads only that half, and the high half of its product is the next word, so
// whatever the upper halves hold never reaches a result.
static inline void uniforms_x8(uint64_t seed, uint64_t counter, float* out) {
  const __m512i ctr = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(counter)),
                                       _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  __m512i c0 = ctr, c1 = _mm512_srli_epi64(ctr, 32), c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i round_a = _mm512_set1_epi64(kPhiloxRoundA), round_b = _mm512_set1_epi64(kPhiloxRoundB);
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  constexpr int kXor3 = 0x96;  // a ^ b ^ c
  for (int round = 0; round < 10; ++round) {
    const __m512i prod_b = _mm512_mul_epu32(c2, round_b);
    const __m512i prod_a = _mm512_mul_epu32(c0, round_a);
    c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(prod_b, 32), c1, _mm512_set1_epi64(k0), kXor3);
    c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(prod_a, 32), c3, _mm512_set1_epi64(k1), kXor3);
    c1 = prod_b;
    c3 = prod_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  // uint32_to_unit_float on the low halves: x ^ (x >> 31) is x >= 0 ? x : ~x.
  auto unit = [](__m512i words) {
    const __m256i x = _mm512_cvtepi64_epi32(words);
    const __m256i folded = _mm256_xor_si256(x, _mm256_srai_epi32(x, 31));
    return _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(kUint31ToUnit)));
  };
  const __m512i words01 = _mm512_inserti64x4(_mm512_zextsi256_si512(unit(c0)), unit(c1), 1);
  const __m512i words23 = _mm512_inserti64x4(_mm512_zextsi256_si512(unit(c2)), unit(c3), 1);
  // block b's four words to out[4b .. 4b + 3]: indexes into (words01, words23)
  const __m512i first4 = _mm512_set_epi32(27, 19, 11, 3, 26, 18, 10, 2, 25, 17, 9, 1, 24, 16, 8, 0);
  const __m512i last4 = _mm512_add_epi32(first4, _mm512_set1_epi32(4));
  _mm512_storeu_si512(out, _mm512_permutex2var_epi32(words01, first4, words23));
  _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi32(words01, last4, words23));
}
#endif

// Uniforms of stream elements [first, first + count), count <= kNoiseBlock,
// written into `scratch` (kNoiseBlock + 8 floats); returns the first one.
static inline const float* uniform_block(uint64_t seed, uint64_t first, int64_t count,
                                         float* scratch) {
  const uint64_t counter0 = first >> 2;
  const int64_t skip = static_cast<int64_t>(first & 3);
  const int64_t n_counters = (skip + count + 3) >> 2;
  int64_t k = 0;
#if defined(__AVX512F__)
  for (; k + 8 <= n_counters; k += 8) uniforms_x8(seed, counter0 + static_cast<uint64_t>(k), scratch + 4 * k);
#endif
  for (; k < n_counters; ++k) {
    uint32_t words[4];
    philox4x32(seed, counter0 + static_cast<uint64_t>(k), words);
    for (int j = 0; j < 4; ++j) scratch[4 * k + j] = uint32_to_unit_float(words[j]);
  }
  return scratch + skip;
}

}  // namespace l0fast
