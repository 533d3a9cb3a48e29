// Philox4x32-10 counter-based generator (Salmon et al., SC'11, "Random123"),
// laid out exactly as `triton.language.randint4x(seed, counter)` with an int64
// counter: state (lo32(counter), hi32(counter), 0, 0), key (lo32(seed), hi32(seed)).
//
// Element e of the l0fast noise stream is word (e mod 4) of the block at
// counter (e div 4), mapped to [0, 1) as `triton.language.rand` maps a word,
// so one Philox call serves four gates.  With AVX-512 (AVX2), eight (four) blocks
// run at once in the lanes of a vector, several vectors interleaved
// (`philox_lanes`), bit for bit the scalar ones.
#pragma once
#include <cstdint>
#if defined(__AVX512F__) || defined(__AVX2__)
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

// Vector lanes for Philox: each 64-bit lane holds one block's 32-bit word in its low half.  The 32x32 -> 64
// multiply (vpmuludq) reads only that half, and the high half of its product is the next word, so whatever
// the upper halves hold never reaches a result.
#if defined(__AVX512F__)
struct PhiloxLanes {  // eight blocks per register
  using V = __m512i;
  static constexpr int kBlocks = 8;
  static constexpr int kChains = 4;
  static V broadcast(uint64_t x) { return _mm512_set1_epi64(static_cast<long long>(x)); }
  static V counters(uint64_t first) { return _mm512_add_epi64(broadcast(first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)); }
  static V zero() { return _mm512_setzero_si512(); }
  static V mul_low32(V a, V b) { return _mm512_mul_epu32(a, b); }
  static V high32(V x) { return _mm512_srli_epi64(x, 32); }
  static V xor3(V a, V b, V c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
  // Block b's uniforms (w0, w1, w2, w3) to out[4b .. 4b + 3].
  static void store_uniforms(V w0, V w1, V w2, V w3, float* out) {
    const V pairs01 = unit(_mm512_mask_blend_epi32(0xAAAA, w0, _mm512_slli_epi64(w1, 32)));
    const V pairs23 = unit(_mm512_mask_blend_epi32(0xAAAA, w2, _mm512_slli_epi64(w3, 32)));
    _mm512_storeu_si512(out, _mm512_permutex2var_epi64(pairs01, _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), pairs23));
    _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(pairs01, _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4), pairs23));
  }
  // uint32_to_unit_float on every 32-bit word: x ^ (x >> 31) is x >= 0 ? x : ~x.
  static V unit(V words) {
    const V folded = _mm512_xor_si512(words, _mm512_srai_epi32(words, 31));
    return _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(folded), _mm512_set1_ps(kUint31ToUnit)));
  }
};
#elif defined(__AVX2__)
struct PhiloxLanes {  // four blocks per register; two chains (sixteen registers)
  using V = __m256i;
  static constexpr int kBlocks = 4;
  static constexpr int kChains = 2;
  static V broadcast(uint64_t x) { return _mm256_set1_epi64x(static_cast<long long>(x)); }
  static V counters(uint64_t first) { return _mm256_add_epi64(broadcast(first), _mm256_set_epi64x(3, 2, 1, 0)); }
  static V zero() { return _mm256_setzero_si256(); }
  static V mul_low32(V a, V b) { return _mm256_mul_epu32(a, b); }
  static V high32(V x) { return _mm256_srli_epi64(x, 32); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static void store_uniforms(V w0, V w1, V w2, V w3, float* out) {
    const V pairs01 = unit(_mm256_blend_epi32(w0, _mm256_slli_epi64(w1, 32), 0xAA));
    const V pairs23 = unit(_mm256_blend_epi32(w2, _mm256_slli_epi64(w3, 32), 0xAA));
    const V blocks02 = _mm256_unpacklo_epi64(pairs01, pairs23), blocks13 = _mm256_unpackhi_epi64(pairs01, pairs23);
    _mm256_storeu_si256(reinterpret_cast<V*>(out), _mm256_permute2x128_si256(blocks02, blocks13, 0x20));
    _mm256_storeu_si256(reinterpret_cast<V*>(out + 8), _mm256_permute2x128_si256(blocks02, blocks13, 0x31));
  }
  static V unit(V words) {
    const V folded = _mm256_xor_si256(words, _mm256_srai_epi32(words, 31));
    return _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(kUint31ToUnit)));
  }
};
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
// Uniforms of the B = kBlocks * chains blocks at counters counter .. counter + B - 1, as 4 B floats in stream
// order, the same bits as B philox4x32 + uint32_to_unit_float.  A round is a chain of dependent instructions
// (multiply, shift, xor); independent chains of kBlocks blocks interleaved keep the vector units busy while
// each waits on its multiply (AVX-512, four chains: 0.95 -> 0.62 ns per uniform here).
template <int chains>
static inline void philox_lanes(uint64_t seed, uint64_t counter, float* out) {
  using Lanes = PhiloxLanes;
  using V = Lanes::V;
  V c0[chains], c1[chains], c2[chains], c3[chains];
  for (int j = 0; j < chains; ++j) {
    c0[j] = Lanes::counters(counter + static_cast<uint64_t>(Lanes::kBlocks * j));
    c1[j] = Lanes::high32(c0[j]);
    c2[j] = c3[j] = Lanes::zero();
  }
  const V round_a = Lanes::broadcast(kPhiloxRoundA), round_b = Lanes::broadcast(kPhiloxRoundB);
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const V key0 = Lanes::broadcast(k0), key1 = Lanes::broadcast(k1);
    for (int j = 0; j < chains; ++j) {
      const V prod_b = Lanes::mul_low32(c2[j], round_b);
      const V prod_a = Lanes::mul_low32(c0[j], round_a);
      c0[j] = Lanes::xor3(Lanes::high32(prod_b), c1[j], key0);
      c2[j] = Lanes::xor3(Lanes::high32(prod_a), c3[j], key1);
      c1[j] = prod_b;
      c3[j] = prod_a;
    }
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  for (int j = 0; j < chains; ++j) Lanes::store_uniforms(c0[j], c1[j], c2[j], c3[j], out + 4 * Lanes::kBlocks * j);
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
#if defined(__AVX512F__) || defined(__AVX2__)
  constexpr int kChains = PhiloxLanes::kChains, kBlocks = PhiloxLanes::kBlocks;
  for (; k + kChains * kBlocks <= n_counters; k += kChains * kBlocks)
    philox_lanes<kChains>(seed, counter0 + static_cast<uint64_t>(k), scratch + 4 * k);
  for (; k + kBlocks <= n_counters; k += kBlocks) philox_lanes<1>(seed, counter0 + static_cast<uint64_t>(k), scratch + 4 * k);
#endif
  for (; k < n_counters; ++k) {
    uint32_t words[4];
    philox4x32(seed, counter0 + static_cast<uint64_t>(k), words);
    for (int j = 0; j < 4; ++j) scratch[4 * k + j] = uint32_to_unit_float(words[j]);
  }
  return scratch + skip;
}

}  // namespace l0fast
