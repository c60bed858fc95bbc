// The loops of avg_pool_cpu.cpp, compiled once per CPU kernel variant (cpu_variants.h): no
// include guard, included inside a variant namespace after the library headers. Each output is
// the box sum of its in-bounds taps added in row-major order of the offsets (dh, then dw),
// starting from 0, then divided by the taps: vectors hold independent pixels (NCHW) or
// channels (NHWC) of one output row, so every variant rounds each output the same way.

// Taps of a 3-wide window at position i of an axis of length n (1 at a border, else 3; 1 when
// n == 1).
inline int64_t taps(int64_t i, int64_t n) { return std::min(i + 2, n) - std::max<int64_t>(i - 1, 0); }

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

// The backward's first step on one [H, W, C] image: each output's share, grad / taps, as
// ATen computes it before scattering. A row of W x C values has one divisor at its two ends
// and one inside (long vectorisable runs, also for C = 1).
template <typename scalar_t>
void scale_by_taps(const scalar_t* in, scalar_t* scaled, int64_t H, int64_t W, int64_t C) {
  const int64_t row = W * C, mid_end = W > 1 ? row - C : C;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t th = taps(h, H);
    const scalar_t d_end = static_cast<scalar_t>(th * taps(0, W)), d_mid = static_cast<scalar_t>(th * 3);
    const scalar_t* g = in + h * row;
    scalar_t* s = scaled + h * row;
    for (int64_t k = 0; k < C; ++k) s[k] = g[k] / d_end;
    for (int64_t k = C; k < mid_end; ++k) s[k] = g[k] / d_mid;
    for (int64_t k = mid_end; k < row; ++k) s[k] = g[k] / d_end;
  }
}

// Every image of a dense channels-last [N, H, W, C] tensor, in parallel: the forward (box sum
// / taps) or the backward (grad / taps of each output, then the box sum of that).
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
      scale_by_taps(in, scaled.data(), H, W, C);
      box_sum_image_nhwc(scaled.data(), out, H, W, C, false);
    }
  });
}

// The box sum of `planes` consecutive [H, W] planes (H, W >= 3), divided by the taps when
// Divide. NCHW rows are short (NB201: 32, 16, 8 pixels), so a row-at-a-time loop is mostly
// loop ends; instead one flat loop over the block applies the 9-tap interior rule to every
// position that has both neighbouring rows in the block (border pixels get a wrong value
// there), then each plane's border (top and bottom rows, first and last columns) is written
// again by its own rule. Same taps, same order, from 0, as box_sum_image_nhwc.
template <bool Divide, typename scalar_t>
void box_sum_planes_flat(const scalar_t* in, scalar_t* out, int64_t planes, int64_t H, int64_t W) {
  const int64_t HW = H * W, total = planes * HW;
  const scalar_t d9 = 9, d6 = 6;
  for (int64_t i = W + 1; i < total - W - 1; ++i) {
    scalar_t s = 0;
    s += in[i - W - 1];
    s += in[i - W];
    s += in[i - W + 1];
    s += in[i - 1];
    s += in[i];
    s += in[i + 1];
    s += in[i + W - 1];
    s += in[i + W];
    s += in[i + W + 1];
    out[i] = Divide ? s / d9 : s;
  }
  for (int64_t p = 0; p < planes; ++p) {
    const scalar_t* ip = in + p * HW;
    scalar_t* o = out + p * HW;
    const scalar_t* top[2] = {ip, ip + W};
    const scalar_t* bottom[2] = {ip + (H - 2) * W, ip + (H - 1) * W};
    box_sum_row_nhwc<2, Divide>(top, o, W, 1, scalar_t(4), d6);
    box_sum_row_nhwc<2, Divide>(bottom, o + (H - 1) * W, W, 1, scalar_t(4), d6);
    for (int64_t h = 1; h < H - 1; ++h) {
      const scalar_t* r = ip + (h - 1) * W;
      scalar_t left = 0, right = 0;
      for (int k = 0; k < 3; ++k, r += W) {
        left += r[0];
        left += r[1];
        right += r[W - 2];
        right += r[W - 1];
      }
      o[h * W] = Divide ? left / d6 : left;
      o[h * W + W - 1] = Divide ? right / d6 : right;
    }
  }
}

// Every plane of a contiguous NCHW tensor ([planes, H, W]), in parallel, forward or backward
// as pool_images_nhwc: blocks of planes of about 64 KiB by the flat loop, planes narrower or
// lower than 3 as one-channel channels-last images.
template <typename scalar_t>
void pool_planes(const scalar_t* ip, scalar_t* op, int64_t planes, int64_t H, int64_t W, bool backward) {
  if (H < 3 || W < 3) return pool_images_nhwc(ip, op, planes, H, W, 1, backward);
  const int64_t HW = H * W, block = std::max<int64_t>(1, (int64_t{1} << 16) / (HW * int64_t(sizeof(scalar_t))));
  at::parallel_for(0, (planes + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> scaled(backward ? block * HW : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * block, n = std::min(block, planes - first);
      const scalar_t* in = ip + first * HW;
      scalar_t* out = op + first * HW;
      if (!backward) {
        box_sum_planes_flat<true>(in, out, n, H, W);
        continue;
      }
      // grad / taps: 9 taps for every pixel in one flat loop, then each plane's border again
      // with its own divisor (scale_by_taps per plane would again run rows of W - 2).
      const scalar_t d9 = 9;
      scalar_t* sc = scaled.data();
      for (int64_t i = 0; i < n * HW; ++i) sc[i] = in[i] / d9;
      for (int64_t q = 0; q < n; ++q) {
        const scalar_t* g = in + q * HW;
        scalar_t* o = sc + q * HW;
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t d = static_cast<scalar_t>(2 * taps(w, W));
          o[w] = g[w] / d;
          o[(H - 1) * W + w] = g[(H - 1) * W + w] / d;
        }
        const scalar_t d6 = 6;
        for (int64_t h = 1; h < H - 1; ++h) {
          o[h * W] = g[h * W] / d6;
          o[h * W + W - 1] = g[h * W + W - 1] / d6;
        }
      }
      box_sum_planes_flat<false>(scaled.data(), out, n, H, W);
    }
  });
}
