// One call per LoRA layer for decode steps: each row's adapter read at its own rank, straight from vLLM's
// stacked weights (lora_a) and the plugin's transposed copy of lora_b. Built by rows_kernel.py.
//
// y[t, off_i + o] += sum_k Bt_i[s, k, o] * (scale * sum_j A_i[s, k, j] * x[t, j]),  k < ranks[s], s = slot of t
//
// Rows are computed one by one (four rank rows of the shrink share each load of x; the expand sums 64 output
// columns in registers across the rank). A row's result depends on its own inputs only, in a fixed order: the
// same request gives the same numbers alone or in any batch.
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

inline float to_float(float v) { return v; }

inline float to_float(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
inline float dot(const T* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += to_float(a[j]) * b[j];
  return acc;
}

// h[k] = scale * A[k] . x for k < r, four rank rows at a time (each load of x serves four products).
template <typename T>
inline void shrink(const T* a, const float* x, int64_t in, int64_t r, float scale, float* h) {
  int64_t k = 0;
  for (; k + 4 <= r; k += 4) {
    const T *a0 = a + k * in, *a1 = a0 + in, *a2 = a1 + in, *a3 = a2 + in;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < in; ++j) {
      const float xv = x[j];
      s0 += to_float(a0[j]) * xv;
      s1 += to_float(a1[j]) * xv;
      s2 += to_float(a2[j]) * xv;
      s3 += to_float(a3[j]) * xv;
    }
    h[k] = s0 * scale;
    h[k + 1] = s1 * scale;
    h[k + 2] = s2 * scale;
    h[k + 3] = s3 * scale;
  }
  for (; k < r; ++k) h[k] = dot(a + k * in, x, in) * scale;
}

constexpr int64_t OB = 64;  // output columns summed in registers across the rank

inline void add(float& dst, float v) { dst += v; }
inline void add(c10::BFloat16& dst, float v) { dst = static_cast<c10::BFloat16>(to_float(dst) + v); }

// y[o] += sum_k h[k] * bt[k * stride + o] for o < width (at most OB): a full block's width is a constant, so its
// sums stay in registers across the rank.
template <typename T, bool FULL>
inline void expand(const T* bt, int64_t stride, const float* h, int64_t r, T* y, int64_t width) {
  const int64_t w = FULL ? OB : width;
  float acc[OB] = {};
  for (int64_t k = 0; k < r; ++k) {
    const float hk = h[k];
    const T* b = bt + k * stride;
#pragma omp simd
    for (int64_t o = 0; o < w; ++o) acc[o] += hk * to_float(b[o]);
  }
  for (int64_t o = 0; o < w; ++o) add(y[o], acc[o]);
}

template <typename T>
void run(torch::Tensor& y, const torch::Tensor& x, const torch::Tensor& rows, const torch::Tensor& row_slots,
         const torch::Tensor& ranks, const std::vector<torch::Tensor>& as, const std::vector<torch::Tensor>& bts,
         const std::vector<int64_t>& offsets, float scale) {
  const int64_t n = rows.size(0), in = x.size(1);
  const int64_t* row = rows.data_ptr<int64_t>();
  const int64_t* slot = row_slots.data_ptr<int64_t>();
  const int64_t* rank = ranks.data_ptr<int64_t>();
  const T* xd = x.data_ptr<T>();
  T* yd = y.data_ptr<T>();
  std::vector<float> xf(in), h;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = row[i], s = slot[i];
    TORCH_CHECK(t >= 0 && t < x.size(0) && t < y.size(0) && s >= 0 && s < ranks.size(0), "row or slot out of range");
    const T* xr = xd + t * x.stride(0);
    for (int64_t j = 0; j < in; ++j) xf[j] = to_float(xr[j]);
    for (size_t p = 0; p < as.size(); ++p) {
      const int64_t slot_rank = as[p].size(1), out = bts[p].size(2);
      const int64_t r = std::min(rank[s], slot_rank);
      if (r <= 0) continue;
      const T* a = as[p].data_ptr<T>() + s * slot_rank * in;
      const T* bt = bts[p].data_ptr<T>() + s * slot_rank * out;
      h.resize(r);
      shrink(a, xf.data(), in, r, scale, h.data());
      T* yr = yd + t * y.stride(0) + offsets[p];
      int64_t o = 0;
      for (; o + OB <= out; o += OB) expand<T, true>(bt + o, out, h.data(), r, yr + o, OB);
      if (o < out) expand<T, false>(bt + o, out, h.data(), r, yr + o, out - o);
    }
  }
}

}  // namespace

void lora_rows(torch::Tensor y, torch::Tensor x, torch::Tensor rows, torch::Tensor row_slots, torch::Tensor ranks,
               std::vector<torch::Tensor> as, std::vector<torch::Tensor> bts, std::vector<int64_t> offsets,
               double scale) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.stride(1) == 1 && x.stride(1) == 1, "rows of y and x must be dense");
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "y and x must share a dtype");
  TORCH_CHECK(rows.scalar_type() == torch::kLong && row_slots.scalar_type() == torch::kLong &&
                  ranks.scalar_type() == torch::kLong && rows.is_contiguous() && row_slots.is_contiguous() &&
                  ranks.is_contiguous() && rows.size(0) == row_slots.size(0),
              "rows, row_slots and ranks must be dense int64");
  TORCH_CHECK(as.size() == bts.size() && as.size() == offsets.size(), "one lora_a, lora_b and offset per slice");
  for (size_t p = 0; p < as.size(); ++p) {
    TORCH_CHECK(as[p].is_contiguous() && bts[p].is_contiguous(), "stacked weights must be contiguous");
    TORCH_CHECK(as[p].scalar_type() == y.scalar_type() && bts[p].scalar_type() == y.scalar_type(),
                "weights must have y's dtype");
    TORCH_CHECK(as[p].dim() == 3 && bts[p].dim() == 3 && as[p].size(2) == x.size(1) && as[p].size(0) == ranks.size(0) &&
                    bts[p].size(0) == ranks.size(0) && bts[p].size(1) == as[p].size(1) &&
                    offsets[p] >= 0 && offsets[p] + bts[p].size(2) <= y.size(1),
                "weight shapes do not match x, y and the slots");
  }
  if (y.scalar_type() == torch::kFloat) {
    run<float>(y, x, rows, row_slots, ranks, as, bts, offsets, static_cast<float>(scale));
  } else if (y.scalar_type() == torch::kBFloat16) {
    run<c10::BFloat16>(y, x, rows, row_slots, ranks, as, bts, offsets, static_cast<float>(scale));
  } else {
    TORCH_CHECK(false, "lora_rows supports float32 and bfloat16");
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("lora_rows", &lora_rows, "LoRA of a decode step, row by row"); }
