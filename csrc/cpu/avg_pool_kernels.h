// The loops of avg_pool_cpu.cpp, compiled once per CPU kernel variant (cpu_variants.h): no
// include guard, included inside a variant namespace after the library headers. Each output is
// the box sum of its in-bounds taps added in row-major order of the offsets (dh, then dw),
// starting from 0, then divided by the taps: vectors hold independent pixels (NCHW) or
// channels (NHWC), so every variant rounds each output the same way.

// Taps of a 3-wide window at position i of an axis of length n (1 at a border, else 3; 1 when
// n == 1).
inline int64_t taps(int64_t i, int64_t n) { return std::min(i + 2, n) - std::max<int64_t>(i - 1, 0); }

// out[h][w] = sum over dh in {-1, 0, 1}, then dw in {-1, 0, 1} (in bounds) of in[h + dh][w + dw],
// accumulated from 0 in that order; then divided by the taps when divide is set.
template <typename scalar_t>
void box_sum_plane(const scalar_t* in, scalar_t* out, int64_t H, int64_t W, bool divide, scalar_t* acc) {
  for (int64_t h = 0; h < H; ++h) {
    std::fill(acc, acc + W, scalar_t(0));
    const int64_t h0 = std::max<int64_t>(h - 1, 0), h1 = std::min(h + 2, H);
    for (int64_t r = h0; r < h1; ++r) {
      const scalar_t* row = in + r * W;
      if (W == 1) {
        acc[0] += row[0];
        continue;
      }
      // w = 0: taps dw = 0, +1.
      acc[0] += row[0];
      acc[0] += row[1];
      // interior: dw = -1, 0, +1 in that order for every pixel.
      for (int64_t w = 1; w < W - 1; ++w) {
        scalar_t s = acc[w];
        s += row[w - 1];
        s += row[w];
        s += row[w + 1];
        acc[w] = s;
      }
      // w = W - 1: taps dw = -1, 0.
      acc[W - 1] += row[W - 2];
      acc[W - 1] += row[W - 1];
    }
    scalar_t* o = out + h * W;
    if (divide) {
      const int64_t th = h1 - h0;
      for (int64_t w = 0; w < W; ++w) o[w] = acc[w] / static_cast<scalar_t>(th * taps(w, W));
    } else {
      std::copy(acc, acc + W, o);
    }
  }
}

// Every (n, c) plane of a contiguous [planes, H, W] tensor, in parallel: the forward
// (box sum / taps) or the backward (grad / taps of each output, then the box sum of that).
template <typename scalar_t>
void pool_planes(const scalar_t* ip, scalar_t* op, int64_t planes, int64_t H, int64_t W, bool backward) {
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> acc(W), scaled(backward ? H * W : 0);
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* in = ip + p * H * W;
      scalar_t* out = op + p * H * W;
      if (!backward) {
        box_sum_plane(in, out, H, W, true, acc.data());
        continue;
      }
      // Each output's share, grad / taps, as ATen computes it before scattering.
      for (int64_t h = 0; h < H; ++h) {
        const int64_t th = taps(h, H);
        for (int64_t w = 0; w < W; ++w) scaled[h * W + w] = in[h * W + w] / static_cast<scalar_t>(th * taps(w, W));
      }
      box_sum_plane(scaled.data(), out, H, W, false, acc.data());
    }
  });
}

// One output row of the channels-last box sum from its NR in-bounds input rows (dh order),
// each row W x C values: o[w][c] = (sum over rows, then dw in {-1, 0, 1} in bounds, of
// row[w + dw][c], from 0) / divisor when Divide (the divisor of the row's interior and of its
// two ends given). One write per output, the taps summed in registers.
template <int NR, bool Divide, typename scalar_t>
void box_sum_row_nhwc(const scalar_t* const* rows, scalar_t* o, int64_t W, int64_t C, scalar_t d_end,
                      scalar_t d_mid) {
  const int64_t n = W * C;
  if (W == 1) {
    for (int64_t k = 0; k < C; ++k) {
      scalar_t s = 0;
      for (int r = 0; r < NR; ++r) s += rows[r][k];
      o[k] = Divide ? s / d_end : s;
    }
    return;
  }
  // w = 0: dw = 0, +1.
  for (int64_t k = 0; k < C; ++k) {
    scalar_t s = 0;
    for (int r = 0; r < NR; ++r) {
      s += rows[r][k];
      s += rows[r][k + C];
    }
    o[k] = Divide ? s / d_end : s;
  }
  // interior: dw = -1, 0, +1.
  for (int64_t k = C; k < n - C; ++k) {
    scalar_t s = 0;
    for (int r = 0; r < NR; ++r) {
      s += rows[r][k - C];
      s += rows[r][k];
      s += rows[r][k + C];
    }
    o[k] = Divide ? s / d_mid : s;
  }
  // w = W - 1: dw = -1, 0.
  for (int64_t k = n - C; k < n; ++k) {
    scalar_t s = 0;
    for (int r = 0; r < NR; ++r) {
      s += rows[r][k - C];
      s += rows[r][k];
    }
    o[k] = Divide ? s / d_end : s;
  }
}

// The channels-last box sum of one [H, W, C] image, divided by the taps when divide is set.
template <typename scalar_t>
void box_sum_image_nhwc(const scalar_t* in, scalar_t* out, int64_t H, int64_t W, int64_t C, bool divide) {
  const int64_t row = W * C;
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* rows[3];
    int nr = 0;
    for (int64_t r = std::max<int64_t>(h - 1, 0); r < std::min(h + 2, H); ++r) rows[nr++] = in + r * row;
    const scalar_t d_end = static_cast<scalar_t>(nr * taps(0, W));
    const scalar_t d_mid = static_cast<scalar_t>(nr * 3);
    scalar_t* o = out + h * row;
    auto run = [&](auto divide_now) {
      switch (nr) {
        case 3: return box_sum_row_nhwc<3, decltype(divide_now)::value>(rows, o, W, C, d_end, d_mid);
        case 2: return box_sum_row_nhwc<2, decltype(divide_now)::value>(rows, o, W, C, d_end, d_mid);
        default: return box_sum_row_nhwc<1, decltype(divide_now)::value>(rows, o, W, C, d_end, d_mid);
      }
    };
    if (divide) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  }
}

// Every image of a dense channels-last [N, H, W, C] tensor, in parallel: forward or backward
// as pool_planes.
template <typename scalar_t>
void pool_images_nhwc(const scalar_t* ip, scalar_t* op, int64_t N, int64_t H, int64_t W, int64_t C, bool backward) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> scaled(backward ? H * W * C : 0);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* in = ip + n * H * W * C;
      scalar_t* out = op + n * H * W * C;
      if (!backward) {
        box_sum_image_nhwc(in, out, H, W, C, true);
        continue;
      }
      // Each output's share, grad / taps, as ATen computes it before scattering.
      for (int64_t h = 0; h < H; ++h) {
        const int64_t th = taps(h, H);
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t d = static_cast<scalar_t>(th * taps(w, W));
          const int64_t at = (h * W + w) * C;
          for (int64_t c = 0; c < C; ++c) scaled[at + c] = in[at + c] / d;
        }
      }
      box_sum_image_nhwc(scaled.data(), out, H, W, C, false);
    }
  });
}
