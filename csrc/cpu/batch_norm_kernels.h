// The loops of batch_norm_cpu.cpp, compiled once per CPU kernel variant (cpu_variants.h): no
// include guard, included inside a variant namespace after the library headers.
//
// A batch is a [rows = N*H*W, channels] matrix (channels-last); every loop runs along the
// contiguous channels, so vectors of any width hold independent channels and each channel's
// values are added in the same order on every variant.

// Rows per statistics block: about 16k values, at least one row.
inline int64_t block_rows(int64_t channels) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(channels, 1)); }

// Calls f(width) with the width as a compile-time constant for NB201's channel counts (the
// loops along the channels are then unrolled into whole vectors; a run-time trip count of 16
// costs more in loop set-up than in arithmetic), else as an int64_t.
template <typename F>
void with_width(int64_t width, F f) {
  switch (width) {
    case 16: return f(std::integral_constant<int64_t, 16>{});
    case 32: return f(std::integral_constant<int64_t, 32>{});
    case 48: return f(std::integral_constant<int64_t, 48>{});
    case 64: return f(std::integral_constant<int64_t, 64>{});
    case 96: return f(std::integral_constant<int64_t, 96>{});
    case 128: return f(std::integral_constant<int64_t, 128>{});
    case 192: return f(std::integral_constant<int64_t, 192>{});
    default: return f(width);
  }
}

// Rows summed in scalar_t before a float64 add: short enough that the scalar_t sums keep
// float32 close to float64 (a few ulps), long enough that the float64 adds cost nothing.
constexpr int64_t kInnerRows = 32;

// Per-channel sums over the rows of a [rows, width] matrix: rowfn(r, acc) adds row r into a
// scalar_t accumulator; every kInnerRows rows it is added into float64, per block of rows, and
// the blocks are combined in block order (the result depends on the shape only, not on the
// thread count).
template <typename scalar_t, typename RowFn>
std::vector<double> column_sums(int64_t rows, int64_t width, RowFn rowfn) {
  const int64_t per = block_rows(width);
  const int64_t blocks = (rows + per - 1) / per;
  std::vector<double> partial(blocks * width, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> inner(width);
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = partial.data() + b * width;
      const int64_t r1 = std::min(rows, (b + 1) * per);
      for (int64_t r = b * per; r < r1; r += kInnerRows) {
        std::fill(inner.begin(), inner.end(), scalar_t(0));
        const int64_t r2 = std::min(r1, r + kInnerRows);
        for (int64_t q = r; q < r2; ++q) rowfn(q, inner.data());
        for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<double>(inner[c]);
      }
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < width; ++c) total[c] += partial[b * width + c];
  return total;
}

// One register of scalar_t lanes, one channel each (16 bytes in the baseline, 32 for AVX2, 64
// for AVX-512): each lane is computed as the scalar code would. Written out because GCC's own
// vectoriser, given the unrolled channel loops below, vectorised across the parts instead
// (scalar loads and shuffles: the AVX2 build's backward ran 2x slower than the baseline's);
// and one register wide, not wider, because a vector type wider than the target's registers
// lives in memory.
constexpr int64_t kLaneBytes = NWOT_VARIANT_ISA == 2 ? 64 : NWOT_VARIANT_ISA == 1 ? 32 : 16;
template <typename T>
struct Lanes {
  typedef T vec __attribute__((vector_size(kLaneBytes)));
  static constexpr int64_t n = kLaneBytes / static_cast<int64_t>(sizeof(T));
};
// As many scalar_t lanes as one register of float64 holds (half a register of float32): the
// input of a float64 computation lane for lane (a class template: GCC drops vector_size on a
// dependent typedef inside a function template).
template <typename T>
struct HalfLanes {
  typedef T vec __attribute__((vector_size(Lanes<double>::n * sizeof(T))));
};
#define NWOT_LOAD(v, p) __builtin_memcpy(&(v), (p), sizeof(v))
#define NWOT_STORE(p, v) __builtin_memcpy((p), &(v), sizeof(v))

// Whether a width goes the lane-block way: a compile-time width (with_width) that is a whole
// number of lane blocks.
template <typename scalar_t, typename Width>
constexpr bool lane_width() {
  if constexpr (std::is_integral_v<Width>) {
    return false;
  } else {
    return Width::value % Lanes<scalar_t>::n == 0;
  }
}

// column_sums for a width of NV lane blocks, blocks of `per` rows: rowfn(r, inner) adds row r
// into the NV lane blocks inner[]; the same additions in the same order as column_sums.
template <typename scalar_t, int64_t NV, typename RowFn>
std::vector<double> column_sums_lanes(int64_t rows, int64_t per, RowFn rowfn) {
  using V = typename Lanes<scalar_t>::vec;
  constexpr int64_t width = NV * Lanes<scalar_t>::n;
  const int64_t blocks = (rows + per - 1) / per;
  std::vector<double> partial(blocks * width, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = partial.data() + b * width;
      const int64_t r1 = std::min(rows, (b + 1) * per);
      for (int64_t r = b * per; r < r1; r += kInnerRows) {
        V inner[NV];
        for (int64_t j = 0; j < NV; ++j) inner[j] = V{};
        const int64_t r2 = std::min(r1, r + kInnerRows);
        for (int64_t q = r; q < r2; ++q) rowfn(q, inner);
        alignas(kLaneBytes) scalar_t flat[width];
        __builtin_memcpy(flat, inner, sizeof(flat));
        for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<double>(flat[c]);
      }
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < width; ++c) total[c] += partial[b * width + c];
  return total;
}

// Forward: x [rows, PC] (PC = parts * C) -> y_parts[p] [rows, C] for each part, invstd [PC].
template <typename scalar_t>
void batch_norm_forward(const scalar_t* xp, int64_t rows, int64_t PC, int64_t parts, double eps,
                        scalar_t* const* y_parts, double* inv) {
  using V = typename Lanes<scalar_t>::vec;
  constexpr int64_t L = Lanes<scalar_t>::n;
  const int64_t C = PC / parts;
  // shift: the mean in scalar_t for the variance pass; mean_d / scale_d: the float64 mean and
  // invstd that y is computed from.
  std::vector<scalar_t> shift(PC);
  std::vector<double> mean_d(PC), scale_d(PC);
  // Mean, then the biased variance about it (two passes: no cancellation).
  with_width(PC, [&](auto width) {
    std::vector<double> mean, var;
    if constexpr (lane_width<scalar_t, decltype(width)>()) {
      constexpr int64_t NV = decltype(width)::value / L;
      const int64_t per = block_rows(PC);
      mean = column_sums_lanes<scalar_t, NV>(rows, per, [&](int64_t r, V* inner) {
        const scalar_t* row = xp + r * PC;
        for (int64_t j = 0; j < NV; ++j) {
          V v;
          NWOT_LOAD(v, row + j * L);
          inner[j] += v;
        }
      });
      for (int64_t c = 0; c < PC; ++c) shift[c] = static_cast<scalar_t>(mean[c] / static_cast<double>(rows));
      V sh[NV];
      for (int64_t j = 0; j < NV; ++j) NWOT_LOAD(sh[j], shift.data() + j * L);
      var = column_sums_lanes<scalar_t, NV>(rows, per, [&](int64_t r, V* inner) {
        const scalar_t* row = xp + r * PC;
        for (int64_t j = 0; j < NV; ++j) {
          V v;
          NWOT_LOAD(v, row + j * L);
          const V d = v - sh[j];
          inner[j] += d * d;
        }
      });
    } else {
      mean = column_sums<scalar_t>(rows, PC, [&](int64_t r, scalar_t* __restrict__ acc) {
        const scalar_t* __restrict__ row = xp + r * PC;
        for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
      });
      for (int64_t c = 0; c < PC; ++c) shift[c] = static_cast<scalar_t>(mean[c] / static_cast<double>(rows));
      const scalar_t* __restrict__ sh = shift.data();
      var = column_sums<scalar_t>(rows, PC, [&](int64_t r, scalar_t* __restrict__ acc) {
        const scalar_t* __restrict__ row = xp + r * PC;
        for (int64_t c = 0; c < width; ++c) {
          const scalar_t d = row[c] - sh[c];
          acc[c] += d * d;
        }
      });
    }
    for (int64_t c = 0; c < PC; ++c) {
      inv[c] = 1.0 / std::sqrt(var[c] / static_cast<double>(rows) + eps);
      mean_d[c] = mean[c] / static_cast<double>(rows);
      scale_d[c] = inv[c];
    }
  });
  // y in float64, rounded once, as in the NCHW forward below: (x - float32(mean)) * float32(invstd)
  // shifted every value of a channel by the same rounding of the mean (jacob_cov's correlations
  // are ill-conditioned). One register of float64 lanes at a time, fed by half a register of
  // scalar_t (for float64 inputs the same arithmetic as before, bit for bit).
  using D = typename Lanes<double>::vec;
  constexpr int64_t LD = Lanes<double>::n;
  using Half = typename HalfLanes<scalar_t>::vec;
  with_width(C, [&](auto width) {
    at::parallel_for(0, rows, block_rows(PC), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t p = 0; p < parts; ++p) {
          const double* __restrict__ s = mean_d.data() + p * C;
          const double* __restrict__ k = scale_d.data() + p * C;
          const scalar_t* __restrict__ row = xp + r * PC + p * C;
          scalar_t* __restrict__ o = y_parts[p] + r * C;
          if constexpr (lane_width<scalar_t, decltype(width)>()) {
            static_assert(decltype(width)::value % LD == 0, "a lane width is a whole number of float64 registers");
            for (int64_t j = 0; j < decltype(width)::value; j += LD) {
              Half v;
              D sv, kv;
              NWOT_LOAD(v, row + j);
              NWOT_LOAD(sv, s + j);
              NWOT_LOAD(kv, k + j);
              const Half out = __builtin_convertvector((__builtin_convertvector(v, D) - sv) * kv, Half);
              NWOT_STORE(o + j, out);
            }
          } else {
            for (int64_t c = 0; c < width; ++c) o[c] = static_cast<scalar_t>((static_cast<double>(row[c]) - s[c]) * k[c]);
          }
        }
      }
    });
  });
}

// Backward: grad_parts[p], y_parts[p] [rows, C] for each of the P parts, invstd [P C]
// -> grad_x [rows, P C]: invstd * (grad - mean(grad) - y * mean(grad * y)) per channel.
template <typename scalar_t>
void batch_norm_backward(const scalar_t* const* grad_parts, const scalar_t* const* y_parts, const double* inv,
                         int64_t rows, int64_t P, int64_t C, scalar_t* out) {
  using V = typename Lanes<scalar_t>::vec;
  constexpr int64_t L = Lanes<scalar_t>::n;
  const int64_t PC = P * C;
  std::vector<scalar_t> mg(PC), mgy(PC), k(PC);
  with_width(C, [&](auto width) {
    // sum(g) and sum(g * y) per channel: columns (part, g or g*y, channel).
    std::vector<double> sums;
    if constexpr (lane_width<scalar_t, decltype(width)>()) {
      // Each part is a dense [rows, C] matrix: summed on its own, in the row blocks of the
      // all-parts sum below (the same additions per channel).
      constexpr int64_t NV = decltype(width)::value / L;
      sums.resize(2 * PC);
      for (int64_t p = 0; p < P; ++p) {
        std::vector<double> part = column_sums_lanes<scalar_t, 2 * NV>(rows, block_rows(2 * PC), [&](int64_t r, V* inner) {
          const scalar_t* gr = grad_parts[p] + r * C;
          const scalar_t* yr = y_parts[p] + r * C;
          for (int64_t j = 0; j < NV; ++j) {
            V g, y;
            NWOT_LOAD(g, gr + j * L);
            NWOT_LOAD(y, yr + j * L);
            inner[j] += g;
            inner[NV + j] += g * y;
          }
        });
        std::copy(part.begin(), part.end(), sums.begin() + 2 * p * C);
      }
    } else {
      sums = column_sums<scalar_t>(rows, 2 * PC, [&](int64_t r, scalar_t* __restrict__ acc) {
        for (int64_t p = 0; p < P; ++p) {
          const scalar_t* __restrict__ gr = grad_parts[p] + r * C;
          const scalar_t* __restrict__ yr = y_parts[p] + r * C;
          scalar_t* __restrict__ a = acc + 2 * p * C;
          for (int64_t c = 0; c < width; ++c) {
            a[c] += gr[c];
            a[width + c] += gr[c] * yr[c];
          }
        }
      });
    }
    for (int64_t p = 0; p < P; ++p) {
      for (int64_t c = 0; c < C; ++c) {
        mg[p * C + c] = static_cast<scalar_t>(sums[2 * p * C + c] / static_cast<double>(rows));
        mgy[p * C + c] = static_cast<scalar_t>(sums[2 * p * C + C + c] / static_cast<double>(rows));
        k[p * C + c] = static_cast<scalar_t>(inv[p * C + c]);
      }
    }
    at::parallel_for(0, rows, block_rows(PC), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t p = 0; p < P; ++p) {
          const scalar_t* __restrict__ a = mg.data() + p * C;
          const scalar_t* __restrict__ b = mgy.data() + p * C;
          const scalar_t* __restrict__ s = k.data() + p * C;
          const scalar_t* __restrict__ gr = grad_parts[p] + r * C;
          const scalar_t* __restrict__ yr = y_parts[p] + r * C;
          scalar_t* __restrict__ o = out + r * PC + p * C;
          if constexpr (lane_width<scalar_t, decltype(width)>()) {
            for (int64_t j = 0; j < decltype(width)::value; j += L) {
              V g, y, av, bv, sv;
              NWOT_LOAD(g, gr + j);
              NWOT_LOAD(y, yr + j);
              NWOT_LOAD(av, a + j);
              NWOT_LOAD(bv, b + j);
              NWOT_LOAD(sv, s + j);
              const V v = (g - av - y * bv) * sv;
              NWOT_STORE(o + j, v);
            }
          } else {
            for (int64_t c = 0; c < width; ++c) o[c] = (gr[c] - a[c] - yr[c] * b[c]) * s[c];
          }
        }
      }
    });
  });
}


// ---------------------------------------------------------------------------------------------
// NCHW: a channel is N runs of H*W contiguous values, run n at n * stride. Every channel is
// independent (the threads split the channels), and within a channel the values are summed in
// steps of kRunLanes consecutive values: value i of a run goes to lane i % kRunLanes of a scalar_t
// accumulator (one float32 AVX-512 register, two AVX2 or four SSE ones: the lanes and their
// order are the same on every variant), which is added into float64 lane by lane every
// kRunSteps steps (as the channels-last loops add kInnerRows rows in scalar_t).

constexpr int64_t kRunLanes = 16;
constexpr int64_t kRunSteps = 32;

// K per-channel sums over S streams of a channel (the same offsets in each): terms(in, t)
// turns the S input vectors of one lane block into the K vectors to add.
template <typename scalar_t, int64_t S, int64_t K, typename Terms>
void run_sums(const scalar_t* const (&base)[S], int64_t stride, int64_t N, int64_t HW, Terms terms, double* out) {
  using V = typename Lanes<scalar_t>::vec;
  constexpr int64_t L = Lanes<scalar_t>::n;
  constexpr int64_t NV = kRunLanes / L;
  static_assert(kRunLanes % L == 0, "kRunLanes must be a whole number of registers");
  V acc[K][NV];
  for (int64_t k = 0; k < K; ++k) {
    out[k] = 0.0;
    for (int64_t v = 0; v < NV; ++v) acc[k][v] = V{};
  }
  int64_t steps = 0;
  auto flush = [&] {
    for (int64_t k = 0; k < K; ++k) {
      alignas(kLaneBytes) scalar_t flat[kRunLanes];
      __builtin_memcpy(flat, acc[k], sizeof(flat));
      for (int64_t j = 0; j < kRunLanes; ++j) out[k] += static_cast<double>(flat[j]);
      for (int64_t v = 0; v < NV; ++v) acc[k][v] = V{};
    }
    steps = 0;
  };
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* p[S];
    for (int64_t s = 0; s < S; ++s) p[s] = base[s] + n * stride;
    int64_t i = 0;
    for (; i + kRunLanes <= HW; i += kRunLanes) {
      for (int64_t v = 0; v < NV; ++v) {
        V in[S], t[K];
        for (int64_t s = 0; s < S; ++s) NWOT_LOAD(in[s], p[s] + i + v * L);
        terms(in, t);
        for (int64_t k = 0; k < K; ++k) acc[k][v] += t[k];
      }
      if (++steps == kRunSteps) flush();
    }
    if (i < HW) {
      // The run's last partial step: the values copied into zero-padded lanes, and the terms of
      // the padding lanes (not zero in general: (0 - mean)^2) dropped.
      const int64_t rem = HW - i;
      alignas(kLaneBytes) scalar_t buf[S][kRunLanes] = {};
      for (int64_t s = 0; s < S; ++s)
        for (int64_t j = 0; j < rem; ++j) buf[s][j] = p[s][i + j];
      for (int64_t v = 0; v < NV; ++v) {
        V in[S], t[K];
        for (int64_t s = 0; s < S; ++s) NWOT_LOAD(in[s], buf[s] + v * L);
        terms(in, t);
        for (int64_t k = 0; k < K; ++k) {
          alignas(kLaneBytes) scalar_t flat[L];
          __builtin_memcpy(flat, &t[k], sizeof(flat));
          for (int64_t j = 0; j < L; ++j)
            if (v * L + j >= rem) flat[j] = scalar_t(0);
          V masked;
          NWOT_LOAD(masked, flat);
          acc[k][v] += masked;
        }
      }
      if (++steps == kRunSteps) flush();
    }
  }
  if (steps > 0) flush();
}

// Forward, NCHW: x [N, PC, HW] (PC = parts * C) -> y_parts[p] [N, C, HW] for each part, invstd [PC].
template <typename scalar_t>
void batch_norm_forward_nchw(const scalar_t* xp, int64_t N, int64_t PC, int64_t HW, int64_t parts, double eps,
                             scalar_t* const* y_parts, double* inv) {
  using V = typename Lanes<scalar_t>::vec;
  const int64_t C = PC / parts;
  const double count = static_cast<double>(N * HW);
  at::parallel_for(0, PC, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const scalar_t* const base[1] = {xp + c * HW};
      double mean, var;
      run_sums<scalar_t, 1, 1>(base, PC * HW, N, HW, [](const V* in, V* t) { t[0] = in[0]; }, &mean);
      // Mean, then the biased variance about it (two passes: no cancellation).
      const scalar_t shift = static_cast<scalar_t>(mean / count);
      const V sh = V{} + shift;
      run_sums<scalar_t, 1, 1>(base, PC * HW, N, HW, [&](const V* in, V* t) {
        const V d = in[0] - sh;
        t[0] = d * d;
      }, &var);
      inv[c] = 1.0 / std::sqrt(var / count + eps);
      // y in float64, rounded once: (x - float32(mean)) * float32(invstd) shifted every value of a
      // channel by the same rounding of the mean, which jacob_cov's ill-conditioned correlations
      // turned into 2.2e-5 relative on architecture 304 at batch 128 (ATen's float32 BatchNorm:
      // 2.4e-6; this: 1.9e-6, the float64 BatchNorm's).
      const double mean_d = mean / count, scale_d = inv[c];
      const int64_t p = c / C, cc = c % C;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* __restrict__ row = xp + (n * PC + c) * HW;
        scalar_t* __restrict__ o = y_parts[p] + (n * C + cc) * HW;
        for (int64_t i = 0; i < HW; ++i) o[i] = static_cast<scalar_t>((static_cast<double>(row[i]) - mean_d) * scale_d);
      }
    }
  });
}

// Backward, NCHW: grad_parts[p], y_parts[p] [N, C, HW] for each of the P parts, invstd [P C]
// -> grad_x [N, P C, HW]: invstd * (grad - mean(grad) - y * mean(grad * y)) per channel.
template <typename scalar_t>
void batch_norm_backward_nchw(const scalar_t* const* grad_parts, const scalar_t* const* y_parts, const double* inv,
                              int64_t N, int64_t HW, int64_t P, int64_t C, scalar_t* out) {
  using V = typename Lanes<scalar_t>::vec;
  const int64_t PC = P * C;
  const double count = static_cast<double>(N * HW);
  at::parallel_for(0, PC, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t p = c / C, cc = c % C;
      const scalar_t* const base[2] = {grad_parts[p] + cc * HW, y_parts[p] + cc * HW};
      double sums[2];
      run_sums<scalar_t, 2, 2>(base, C * HW, N, HW, [](const V* in, V* t) {
        t[0] = in[0];
        t[1] = in[0] * in[1];
      }, sums);
      const scalar_t a = static_cast<scalar_t>(sums[0] / count);
      const scalar_t b = static_cast<scalar_t>(sums[1] / count);
      const scalar_t s = static_cast<scalar_t>(inv[c]);
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* __restrict__ gr = base[0] + n * C * HW;
        const scalar_t* __restrict__ yr = base[1] + n * C * HW;
        scalar_t* __restrict__ o = out + (n * PC + c) * HW;
        for (int64_t i = 0; i < HW; ++i) o[i] = (gr[i] - a - yr[i] * b) * s;
      }
    }
  });
}

#undef NWOT_LOAD
#undef NWOT_STORE
