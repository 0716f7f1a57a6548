// One call per LoRA layer for decode steps: each row's adapter read at its own rank, straight from vLLM's
// stacked weights (lora_a) and the plugin's transposed copy of lora_b. Built by rows_kernel.py.
//
// y[t, off_i + o] += sum_k Bt_i[s, k, o] * (scale * sum_j A_i[s, k, j] * x[t, j]),  k < ranks[s], s = slot of t
//
// A row's result depends on its own inputs only, in a fixed order: the same request gives the same numbers
// alone or in any batch.
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
  std::vector<float> xf(in), h, acc;
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
      for (int64_t k = 0; k < r; ++k) h[k] = dot(a + k * in, xf.data(), in) * scale;
      acc.assign(out, 0.f);
      float* ac = acc.data();
      for (int64_t k = 0; k < r; ++k) {
        const float hk = h[k];
        const T* b = bt + k * out;
#pragma omp simd
        for (int64_t o = 0; o < out; ++o) ac[o] += hk * to_float(b[o]);
      }
      T* yr = yd + t * y.stride(0) + offsets[p];
      for (int64_t o = 0; o < out; ++o) yr[o] = static_cast<T>(to_float(yr[o]) + ac[o]);
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
