// The loops of sum_relu_cpu.cpp, compiled once per CPU kernel variant (cpu_variants.h): no
// include guard, included inside a variant namespace after the library headers. Every value is
// computed on its own (vectors hold independent values), in ATen's order: the node sum
// ((p0 + p1) + p2) + ... rounded after each add as ATen's sequential `+` rounds it, then
// relu_value / relu_grad_value (nwot.h), so every variant gives ATen's values bit for bit.

// Values [begin, end) of one row: node = sum of the parts in order, relu = relu(node).
template <typename scalar_t>
void sum_relu_span(const scalar_t* const* parts, int64_t k, int64_t begin, int64_t end, scalar_t* node,
                   scalar_t* relu) {
  if (k == 2) {
    const scalar_t* __restrict__ a = parts[0];
    const scalar_t* __restrict__ b = parts[1];
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t s = a[i] + b[i];
      node[i] = s;
      relu[i] = relu_value(s);
    }
    return;
  }
  if (k == 3) {
    const scalar_t* __restrict__ a = parts[0];
    const scalar_t* __restrict__ b = parts[1];
    const scalar_t* __restrict__ c = parts[2];
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t s = (a[i] + b[i]) + c[i];
      node[i] = s;
      relu[i] = relu_value(s);
    }
    return;
  }
  // Any other count: the running sum kept in `node` (each step rounded there, as ATen's).
  const scalar_t* __restrict__ a = parts[0];
  for (int64_t i = begin; i < end; ++i) node[i] = a[i];
  for (int64_t p = 1; p < k; ++p) {
    const scalar_t* __restrict__ b = parts[p];
    for (int64_t i = begin; i < end; ++i) node[i] = node[i] + b[i];
  }
  for (int64_t i = begin; i < end; ++i) relu[i] = relu_value(node[i]);
}

// Values [begin, end): out = grad_node + threshold_backward(grad_relu, relu, 0).
template <typename scalar_t>
void sum_relu_backward_span(const scalar_t* __restrict__ grad_node, const scalar_t* __restrict__ grad_relu,
                            const scalar_t* __restrict__ relu, int64_t begin, int64_t end,
                            scalar_t* __restrict__ out) {
  for (int64_t i = begin; i < end; ++i) out[i] = grad_node[i] + relu_grad_value(grad_relu[i], relu[i]);
}
