// The agreement kernel K of hook_logdet_cpu.cpp (popcounts of XORed codes), compiled once per
// CPU kernel variant (cpu_variants.h): no include guard, included inside a variant namespace
// after the library headers (<immintrin.h> among them on x86-64). Integer arithmetic: every
// variant gives the same K exactly, whatever order it adds the words in.

// GCC 12's AVX2 / AVX-512 intrinsics give their unused operands a self-initialised value
// (`__m512i __Y = __Y`), which -Wall reports as uninitialised once they are inlined (GCC bug
// 105593, fixed in GCC 13): not ours to fix, so silenced for this header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// Words per tile: B rows x kTileWords x 8 bytes stays in L2 for B <= 256, so each row tile
// is read from memory once per block of i rows instead of once per (i, j) pair.
constexpr int64_t kTileWords = 256;
constexpr int64_t kRowBlock = 16;

// sum_{w in [w0, w1)} m[w] * popcount(a[w] ^ b[w]).
inline int64_t weighted_popcount_scalar(const uint64_t* a, const uint64_t* b, const int64_t* m, int64_t w0,
                                        int64_t w1) {
  int64_t sum = 0;
  for (int64_t w = w0; w < w1; ++w) sum += m[w] * __builtin_popcountll(a[w] ^ b[w]);
  return sum;
}

#if NWOT_VARIANT_ISA == 0 && NWOT_X86_VARIANTS
// The baseline with the POPCNT instruction (3-4x the generic bit count); only called when
// cpu::has_popcnt() says the CPU has it.
__attribute__((target("popcnt"))) inline int64_t weighted_popcount_popcnt(const uint64_t* a, const uint64_t* b,
                                                                          const int64_t* m, int64_t w0, int64_t w1) {
  int64_t sum = 0;
  for (int64_t w = w0; w < w1; ++w) sum += m[w] * __builtin_popcountll(a[w] ^ b[w]);
  return sum;
}
#elif NWOT_VARIANT_ISA >= 1
// AVX2 has no vector popcount: per byte by two 4-bit table lookups (vpshufb), summed per
// 64-bit word by vpsadbw, times the word's multiplicity (vpmuludq: the caller guarantees
// 0 <= m < 2^31, so the low 32 bits are the whole product of two such numbers with a popcount).
// The AVX-512 variant uses it too on CPUs without VPOPCNTQ (Skylake-X, Cascade Lake).
inline int64_t weighted_popcount_vector(const uint64_t* a, const uint64_t* b, const int64_t* m, int64_t w0,
                                        int64_t w1) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i acc = _mm256_setzero_si256();
  int64_t w = w0;
  for (; w + 4 <= w1; w += 4) {
    const __m256i x = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w)),
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + w)));
    const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(x, low4)),
                                          _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi64(x, 4), low4)));
    const __m256i counts = _mm256_sad_epu8(bytes, _mm256_setzero_si256());
    acc = _mm256_add_epi64(acc, _mm256_mul_epu32(counts, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + w))));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + weighted_popcount_scalar(a, b, m, w, w1);
}
#endif

#if NWOT_VARIANT_ISA == 2
// With VPOPCNTQ (AVX512_VPOPCNTDQ), one instruction per 8 words; only called when
// cpu::avx512_popcount() says the CPU has it.
__attribute__((target(NWOT_TARGET_AVX512_POPCOUNT))) inline int64_t weighted_popcount_vpopcnt(
    const uint64_t* a, const uint64_t* b, const int64_t* m, int64_t w0, int64_t w1) {
  __m512i acc = _mm512_setzero_si512();
  int64_t w = w0;
  for (; w + 8 <= w1; w += 8) {
    const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(a + w), _mm512_loadu_si512(b + w));
    acc = _mm512_add_epi64(acc, _mm512_mul_epu32(_mm512_popcnt_epi64(x), _mm512_loadu_si512(m + w)));
  }
  return _mm512_reduce_add_epi64(acc) + weighted_popcount_scalar(a, b, m, w, w1);
}
#endif

// Adds sum_w m[w] * popcount(c_i[w] ^ c_j[w]) for i in [i0, i1), j in [i, B) over all words
// into disagree[(i - i0) * B + j]. small_mult: every m[w] is in [0, 2^31) (the vector paths'
// condition; NB201's multiplicities are 1 and 2).
inline void disagreements(const int64_t* codes, const int64_t* mult, int64_t B, int64_t W, int64_t i0, int64_t i1,
                          bool small_mult, int64_t* disagree) {
#if NWOT_VARIANT_ISA == 2
  const bool vpopcnt = cpu::avx512_popcount();
#elif NWOT_VARIANT_ISA == 0 && NWOT_X86_VARIANTS
  const bool popcnt = cpu::has_popcnt();
#endif
  for (int64_t w0 = 0; w0 < W; w0 += kTileWords) {
    const int64_t w1 = std::min(W, w0 + kTileWords);
    for (int64_t i = i0; i < i1; ++i) {
      const uint64_t* ci = reinterpret_cast<const uint64_t*>(codes + i * W);
      int64_t* acc = disagree + (i - i0) * B;
      for (int64_t j = i; j < B; ++j) {
        const uint64_t* cj = reinterpret_cast<const uint64_t*>(codes + j * W);
#if NWOT_VARIANT_ISA == 2
        if (small_mult) {
          acc[j] += vpopcnt ? weighted_popcount_vpopcnt(ci, cj, mult, w0, w1)
                             : weighted_popcount_vector(ci, cj, mult, w0, w1);
          continue;
        }
#elif NWOT_VARIANT_ISA == 1
        if (small_mult) {
          acc[j] += weighted_popcount_vector(ci, cj, mult, w0, w1);
          continue;
        }
#elif NWOT_X86_VARIANTS
        if (popcnt) {
          acc[j] += weighted_popcount_popcnt(ci, cj, mult, w0, w1);
          continue;
        }
#endif
        acc[j] += weighted_popcount_scalar(ci, cj, mult, w0, w1);
      }
    }
  }
}

// K for one architecture into the row-major [B, B] buffer K (int64_t or double).
template <typename out_t>
void agreement_kernel(const int64_t* codes, const int64_t* mult, int64_t units, int64_t B, int64_t W,
                      std::vector<int64_t>& scratch, out_t* K) {
  const bool small_mult = std::all_of(mult, mult + W, [](int64_t m) { return m >= 0 && m < (int64_t(1) << 31); });
  for (int64_t i0 = 0; i0 < B; i0 += kRowBlock) {
    const int64_t i1 = std::min(B, i0 + kRowBlock);
    scratch.assign(static_cast<size_t>((i1 - i0) * B), 0);
    disagreements(codes, mult, B, W, i0, i1, small_mult, scratch.data());
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = i; j < B; ++j) {
        const out_t v = static_cast<out_t>(units - scratch[(i - i0) * B + j]);
        K[i * B + j] = v;
        K[j * B + i] = v;
      }
    }
  }
}

#pragma GCC diagnostic pop
