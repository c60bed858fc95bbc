// The loop of pack_codes_cpu.cpp, compiled once per CPU kernel variant (cpu_variants.h): no
// include guard, included inside a variant namespace after the library headers (<immintrin.h>
// among them on x86-64).
//
// float32 rows (the fast path's activations) are compared 4, 8 or 16 at a time (SSE2 in the
// baseline, AVX2, AVX-512) and their sign masks are the bits; an ordered greater-than is false
// for NaN, as the scalar `x > 0` is. Other dtypes and the last, partial word of a row take the
// scalar loop.

// Word w of a row: bit k is (row[64 w + k] > 0) for k < count.
template <typename scalar_t>
inline uint64_t pack_word_scalar(const scalar_t* row, int64_t count) {
  uint64_t word = 0;
  for (int64_t k = 0; k < count; ++k) word |= static_cast<uint64_t>(static_cast<double>(row[k]) > 0.0) << k;
  return word;
}

// 64 float32 values -> one word.
inline uint64_t pack_word_float(const float* p) {
#if NWOT_VARIANT_ISA == 2
  const __m512 zero = _mm512_setzero_ps();
  uint64_t word = 0;
  for (int q = 0; q < 4; ++q) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 16 * q), zero, _CMP_GT_OQ);
    word |= static_cast<uint64_t>(m) << (16 * q);
  }
  return word;
#elif NWOT_VARIANT_ISA == 1
  const __m256 zero = _mm256_setzero_ps();
  uint64_t word = 0;
  for (int q = 0; q < 8; ++q) {
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 8 * q), zero, _CMP_GT_OQ));
    word |= static_cast<uint64_t>(static_cast<unsigned>(m)) << (8 * q);
  }
  return word;
#elif defined(__SSE2__)
  const __m128 zero = _mm_setzero_ps();
  uint64_t word = 0;
  for (int q = 0; q < 16; ++q) {
    const int m = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(p + 4 * q), zero));
    word |= static_cast<uint64_t>(static_cast<unsigned>(m)) << (4 * q);
  }
  return word;
#else
  return pack_word_scalar(p, 64);
#endif
}

// x [B, units] (contiguous) -> out [B, W], one sample row per task.
template <typename scalar_t>
void pack_rows(const scalar_t* xp, int64_t B, int64_t units, int64_t W, int64_t* out) {
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* row = xp + b * units;
      int64_t w = 0;
      if constexpr (std::is_same_v<scalar_t, float>) {
        for (; 64 * (w + 1) <= units; ++w) out[b * W + w] = static_cast<int64_t>(pack_word_float(row + 64 * w));
      }
      for (; w < W; ++w) {
        const int64_t first = 64 * w;
        out[b * W + w] = static_cast<int64_t>(pack_word_scalar(row + first, std::min<int64_t>(64, units - first)));
      }
    }
  });
}
