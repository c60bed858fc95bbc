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

// Forward: x [rows, PC] (PC = parts * C) -> y [parts][rows, C], invstd [PC].
template <typename scalar_t>
void batch_norm_forward(const scalar_t* xp, int64_t rows, int64_t PC, int64_t parts, double eps, scalar_t* yp,
                        double* inv) {
  const int64_t C = PC / parts;
  std::vector<scalar_t> shift(PC), scale(PC);
  // Mean, then the biased variance about it (two passes: no cancellation).
  with_width(PC, [&](auto width) {
    std::vector<double> mean = column_sums<scalar_t>(rows, PC, [&](int64_t r, scalar_t* __restrict__ acc) {
      const scalar_t* __restrict__ row = xp + r * PC;
      for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
    });
    for (int64_t c = 0; c < PC; ++c) shift[c] = static_cast<scalar_t>(mean[c] / static_cast<double>(rows));
    const scalar_t* __restrict__ sh = shift.data();
    std::vector<double> var = column_sums<scalar_t>(rows, PC, [&](int64_t r, scalar_t* __restrict__ acc) {
      const scalar_t* __restrict__ row = xp + r * PC;
      for (int64_t c = 0; c < width; ++c) {
        const scalar_t d = row[c] - sh[c];
        acc[c] += d * d;
      }
    });
    for (int64_t c = 0; c < PC; ++c) {
      inv[c] = 1.0 / std::sqrt(var[c] / static_cast<double>(rows) + eps);
      scale[c] = static_cast<scalar_t>(inv[c]);
    }
  });
  with_width(C, [&](auto width) {
    at::parallel_for(0, rows, block_rows(PC), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t p = 0; p < parts; ++p) {
          const scalar_t* __restrict__ s = shift.data() + p * C;
          const scalar_t* __restrict__ k = scale.data() + p * C;
          const scalar_t* __restrict__ row = xp + r * PC + p * C;
          scalar_t* __restrict__ o = yp + (p * rows + r) * C;
          for (int64_t c = 0; c < width; ++c) o[c] = (row[c] - s[c]) * k[c];
        }
      }
    });
  });
}

// Backward: grad, y [P][rows, C], invstd [P C] -> grad_x [rows, P C]:
// invstd * (grad - mean(grad) - y * mean(grad * y)) per channel.
template <typename scalar_t>
void batch_norm_backward(const scalar_t* gp, const scalar_t* ypp, const double* inv, int64_t rows, int64_t P,
                         int64_t C, scalar_t* out) {
  const int64_t PC = P * C;
  std::vector<scalar_t> mg(PC), mgy(PC), k(PC);
  with_width(C, [&](auto width) {
    // sum(g) and sum(g * y) per channel; each part is its own [rows, C] matrix, so the
    // columns are (part, channel) pairs summed over a row of every part.
    std::vector<double> sums = column_sums<scalar_t>(rows, 2 * PC, [&](int64_t r, scalar_t* __restrict__ acc) {
      for (int64_t p = 0; p < P; ++p) {
        const scalar_t* __restrict__ gr = gp + (p * rows + r) * C;
        const scalar_t* __restrict__ yr = ypp + (p * rows + r) * C;
        scalar_t* __restrict__ a = acc + 2 * p * C;
        for (int64_t c = 0; c < width; ++c) {
          a[c] += gr[c];
          a[width + c] += gr[c] * yr[c];
        }
      }
    });
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
          const scalar_t* __restrict__ gr = gp + (p * rows + r) * C;
          const scalar_t* __restrict__ yr = ypp + (p * rows + r) * C;
          scalar_t* __restrict__ o = out + r * PC + p * C;
          for (int64_t c = 0; c < width; ++c) o[c] = (gr[c] - a[c] - yr[c] * b[c]) * s[c];
        }
      }
    });
  });
}
