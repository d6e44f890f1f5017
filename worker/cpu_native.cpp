// The CPU decode layer's small ops, each one pass over its data in one call: a decode step in
// torch's eager ops was ~60 calls a layer (norms, rotary, the KV store, page gathers, masks,
// attention), each paying dispatch and a parallel region, and the attention gathered every page
// into a padded copy first. worker/cpu_native.py compiles this once per source, CPU and torch
// (cached on disk) and worker/cpu_ops.py calls it; genfleet_kernels/reference.py is the oracle the tests
// compare with. All arithmetic is float32, rounded to the activations' dtype where the reference
// rounds.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename T>
inline void store_row(const float* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// bfloat16 rows through their bits, so the loops vectorize (c10's conversions carry a NaN branch):
// widening is a shift; narrowing rounds to nearest even, as c10 does for every non-NaN value.
inline void load_row(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t wide = static_cast<uint32_t>(bits[i]) << 16;
    std::memcpy(dst + i, &wide, sizeof wide);
  }
}

inline void store_row(const float* src, c10::BFloat16* dst, int64_t n) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t wide;
    std::memcpy(&wide, src + i, sizeof wide);
    wide += 0x7FFFu + ((wide >> 16) & 1u);
    bits[i] = static_cast<uint16_t>(wide >> 16);
  }
}

// e^x to ~2 ulp, branch-free so a loop of them vectorizes (std::exp's libm call does not):
// 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for precision), e^r from
// the classic degree-7 polynomial (Cephes' expf). Below -87.3 (e^x under float's normal range,
// and the -inf of a hidden key): 0; above 88.3, e^88.3 (float's range ends at e^88.7).
inline float exp_approx(float x) {
  const float clamped = std::min(std::max(x, -87.3f), 88.3f);
  const float n = std::nearbyint(clamped * 1.44269504088896341f);
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.3f ? 0.f : p * scale;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// ---- add + RMS norm --------------------------------------------------------------------------
// residual given: s = x + residual rounded to x's dtype (the new residual stream), out = norm(s);
// else out = norm(x). As the reference: the mean of squares and the scaling in float32, the
// weight widened and offset (Gemma stores w - 1).
template <typename T, typename W>
void rms_norm_rows(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps,
                   double offset, at::Tensor& out, at::Tensor* summed) {
  const int64_t rows = x.size(0), n = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = residual ? residual->data_ptr<T>() : nullptr;
  const W* wp = weight.data_ptr<W>();
  T* op = out.data_ptr<T>();
  T* sp = summed ? summed->data_ptr<T>() : nullptr;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n), res(n), w(n);
    load_row(wp, w.data(), n);
    for (int64_t i = 0; i < n; ++i) w[i] += static_cast<float>(offset);
    for (int64_t r = begin; r < end; ++r) {
      load_row(xp + r * n, row.data(), n);
      if (rp) {  // the sum rounded to T, then normed from the rounded value: as the reference
        load_row(rp + r * n, res.data(), n);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) res[i] += row[i];
        store_row(res.data(), sp + r * n, n);
        load_row(sp + r * n, row.data(), n);
      }
      const float inv = 1.f / std::sqrt(dot(row.data(), row.data(), n) / static_cast<float>(n) + static_cast<float>(eps));
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) row[i] = row[i] * inv * w[i];
      store_row(row.data(), op + r * n, n);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x_in, const c10::optional<at::Tensor>& residual_in,
                                                const at::Tensor& weight_in, double eps, double offset) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  TORCH_CHECK(x.dim() == 2 && weight.numel() == x.size(1), "add_rms_norm takes (T, hidden) and (hidden,)");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == at::kFloat,
              "the norm's weight must be in x's dtype or float32");
  at::Tensor out = at::empty_like(x);
  at::Tensor residual, summed;
  if (residual_in.has_value()) {
    residual = residual_in->contiguous();
    TORCH_CHECK(residual.scalar_type() == x.scalar_type() && residual.sizes() == x.sizes(), "residual must match x");
    summed = at::empty_like(x);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
    const at::Tensor* res = residual.defined() ? &residual : nullptr;
    at::Tensor* sum = summed.defined() ? &summed : nullptr;
    if (weight.scalar_type() == at::kFloat)
      rms_norm_rows<scalar_t, float>(x, res, weight, eps, offset, out, sum);
    else
      rms_norm_rows<scalar_t, scalar_t>(x, res, weight, eps, offset, out, sum);
  });
  return {out, summed.defined() ? summed : x};
}

// ---- SiLU(gate) * up -------------------------------------------------------------------------
template <typename T>
void silu_mul_rows(const at::Tensor& x, at::Tensor& out) {
  const int64_t rows = x.size(0), n = out.size(1);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> gate(n), up(n);
    for (int64_t r = begin; r < end; ++r) {
      load_row(xp + r * 2 * n, gate.data(), n);
      load_row(xp + r * 2 * n + n, up.data(), n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.f + exp_approx(-gate[i])) * up[i];
      store_row(gate.data(), op + r * n, n);
    }
  });
}

at::Tensor silu_and_mul(const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0, "silu_and_mul takes (T, 2I)");
  at::Tensor out = at::empty({x.size(0), x.size(1) / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul",
                                  [&] { silu_mul_rows<scalar_t>(x, out); });
  return out;
}

// ---- rotary ----------------------------------------------------------------------------------
// x: (T, heads, D), any row and head strides, last dim dense; out: a dense copy, rotated.
template <typename T>
void rotate(const at::Tensor& x, const int64_t* pos, const float* table, int64_t table_stride, bool neox,
            at::Tensor& out) {
  const int64_t tokens = x.size(0), heads = x.size(1), dim = x.size(2), half = dim / 2;
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, tokens * heads, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(dim), res(dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / heads, h = task % heads;
      const float* cs = table + pos[t] * table_stride;  // [cos | sin] of this position
      load_row(xp + t * s0 + h * s1, row.data(), dim);
      if (neox) {  // rotate-half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        for (int64_t i = 0; i < half; ++i) {
          res[i] = row[i] * cs[i] - row[i + half] * cs[half + i];
          res[i + half] = row[i + half] * cs[i] + row[i] * cs[half + i];
        }
      } else {  // interleaved pairs
        for (int64_t i = 0; i < half; ++i) {
          res[2 * i] = row[2 * i] * cs[i] - row[2 * i + 1] * cs[half + i];
          res[2 * i + 1] = row[2 * i + 1] * cs[i] + row[2 * i] * cs[half + i];
        }
      }
      store_row(res.data(), op + task * dim, dim);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rotary_embedding(const at::Tensor& positions_in, const at::Tensor& q,
                                                    const at::Tensor& k, const at::Tensor& table_in, bool neox) {
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "rotary needs a dense last dim");
  TORCH_CHECK(table_in.size(1) == q.size(2) && table_in.scalar_type() == at::kFloat, "rotary table must be (P, D) float32");
  const at::Tensor positions = positions_in.to(at::kLong).contiguous();
  const at::Tensor table = table_in.contiguous();
  at::Tensor q_out = at::empty(q.sizes(), q.options()), k_out = at::empty(k.sizes(), k.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rotary_embedding", [&] {
    rotate<scalar_t>(q, positions.data_ptr<int64_t>(), table.data_ptr<float>(), table.stride(0), neox, q_out);
    rotate<scalar_t>(k, positions.data_ptr<int64_t>(), table.data_ptr<float>(), table.stride(0), neox, k_out);
  });
  return {q_out, k_out};
}

// ---- KV store --------------------------------------------------------------------------------
// new: (T, n_kv, D), any row and head strides; cache: (blocks, block_size, n_kv, D) dense, same dtype.
template <typename T>
void store_rows(const at::Tensor& src, at::Tensor& cache, const int64_t* slots) {
  const int64_t tokens = src.size(0), heads = src.size(1), dim = src.size(2);
  const T* sp = src.data_ptr<T>();
  T* cp = cache.data_ptr<T>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;  // a token that stores nothing (a padded row)
    for (int64_t h = 0; h < heads; ++h)
      std::copy_n(sp + t * src.stride(0) + h * src.stride(1), dim, cp + (slots[t] * heads + h) * dim);
  }
}

void store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor k_cache, at::Tensor v_cache,
              const at::Tensor& slot_mapping_in) {
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type(),
              "store_kv: new K/V must be in the cache's dtype");
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "store_kv: dense rows and caches");
  const at::Tensor slots = slot_mapping_in.to(at::kLong).contiguous();
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < slots.size(0); ++t) TORCH_CHECK(sp[t] < capacity, "store_kv: slot past the cache");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k.scalar_type(), "store_kv", [&] {
    store_rows<scalar_t>(k, k_cache, sp);
    store_rows<scalar_t>(v, v_cache, sp);
  });
}

// ---- decode attention over the paged cache ---------------------------------------------------
// One task per sequence and chunk of its KV heads (all of them once there are as many sequences
// as threads): its queries (q_len tokens x the query heads of those KV heads) walk the sequence's
// pages in order, key by key, each key's rows of every KV head read once per pass (a page is one
// contiguous run, so the reads stream); pass 1 scores, pass 2 adds the softmax-weighted values.
// Only positions below the sequence's length are read, so a last page's unwritten slots never
// enter the sums: no NaN * 0 from garbage. Query j of a sequence of length L sits at position
// L - q_len + j and sees the keys at or before it, and with a window only its last `window`.
// DIM > 0: the head dim known at compile time (the common 64 and 128), so the row loops unroll
// into registers; 0: any head dim.
template <typename T, int DIM>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& tables, const at::Tensor& seq_lens, const at::Tensor& starts,
                           double scale, int64_t window, at::Tensor& out) {
  const int64_t seqs = seq_lens.size(0), heads = q.size(1), dim = DIM > 0 ? DIM : q.size(2);
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2), group = heads / kv_heads;
  const int64_t width = tables.size(1);
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  // Few sequences: their KV heads split across the threads, so one sequence still uses them all.
  const int64_t chunks = std::min<int64_t>(kv_heads, std::max<int64_t>(1, (at::get_num_threads() + seqs - 1) / seqs));
  const int64_t per_chunk = (kv_heads + chunks - 1) / chunks;
  const int32_t* tab = tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* st = starts.data_ptr<int32_t>();
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, seqs * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf, scores, acc, row(dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, kv0 = (task % chunks) * per_chunk;
      const int64_t kv1 = std::min(kv_heads, kv0 + per_chunk);
      const int64_t q0 = st[b], q_len = st[b + 1] - st[b], len = lens[b];
      if (q_len <= 0 || kv0 >= kv1) continue;
      const int64_t first_pos = len - q_len;  // query 0's position
      const int64_t lo = window > 0 ? std::max<int64_t>(0, first_pos - window + 1) : 0;
      const int64_t keys = len - lo, heads_here = (kv1 - kv0) * group, rows = q_len * heads_here;
      // Row r = j * heads_here + h: query token j, query head kv0 * group + h.
      qf.resize(rows * dim);
      scores.assign(rows * keys, neg_inf);
      acc.assign(rows * dim, 0.f);
      for (int64_t j = 0; j < q_len; ++j)
        for (int64_t h = 0; h < heads_here; ++h) {
          float* dst = qf.data() + (j * heads_here + h) * dim;
          load_row(qp + (q0 + j) * qs0 + (kv0 * group + h) * qs1, dst, dim);
          for (int64_t i = 0; i < dim; ++i) dst[i] *= static_cast<float>(scale);
        }
      const int32_t* table = tab + b * width;
      for (int64_t p = lo; p < len; ++p) {
        const T* key = kp + (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * kv_heads * dim;
        for (int64_t kv = kv0; kv < kv1; ++kv) {
          load_row(key + kv * dim, row.data(), dim);
          for (int64_t j = 0; j < q_len; ++j) {
            const int64_t pos = first_pos + j;
            if (p > pos || (window > 0 && p <= pos - window)) continue;  // stays -inf: weight 0
            for (int64_t g = 0; g < group; ++g) {
              const int64_t r = j * heads_here + (kv - kv0) * group + g;
              const float* qr = qf.data() + r * dim;
              float s = 0.f;
#pragma omp simd reduction(+ : s)
              for (int64_t d = 0; d < dim; ++d) s += qr[d] * row[d];
              scores[r * keys + (p - lo)] = s;
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {  // softmax in place; every row sees at least its own key
        float* s = scores.data() + r * keys;
        const float m = *std::max_element(s, s + keys);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < keys; ++i) {
          s[i] = exp_approx(s[i] - m);
          sum += s[i];
        }
        const float inv = 1.f / sum;
        for (int64_t i = 0; i < keys; ++i) s[i] *= inv;
      }
      for (int64_t p = lo; p < len; ++p) {
        const T* value = vp + (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * kv_heads * dim;
        for (int64_t kv = kv0; kv < kv1; ++kv) {
          load_row(value + kv * dim, row.data(), dim);
          for (int64_t j = 0; j < q_len; ++j)
            for (int64_t g = 0; g < group; ++g) {
              const int64_t r = j * heads_here + (kv - kv0) * group + g;
              const float w = scores[r * keys + (p - lo)];
              float* a = acc.data() + r * dim;
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) a[d] += w * row[d];
            }
        }
      }
      for (int64_t j = 0; j < q_len; ++j)
        for (int64_t h = 0; h < heads_here; ++h)
          store_row(acc.data() + (j * heads_here + h) * dim, op + ((q0 + j) * heads + kv0 * group + h) * dim, dim);
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens,
                                  const at::Tensor& query_start_loc, double scale, int64_t window) {
  TORCH_CHECK(q.stride(2) == 1 && k_cache.is_contiguous() && v_cache.is_contiguous(), "dense rows and caches");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "the cache must be in q's dtype");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0 && q.size(2) == k_cache.size(3), "head shapes");
  const at::Tensor tables = block_tables.to(at::kInt).contiguous();
  const at::Tensor lens = seq_lens.to(at::kInt).contiguous();
  const at::Tensor starts = query_start_loc.to(at::kInt).contiguous();
  const int64_t capacity_blocks = k_cache.size(0);
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < lens.size(0); ++b) {  // bounds once, so the kernel reads only the pool
    const int64_t used = (lp[b] + k_cache.size(1) - 1) / k_cache.size(1);
    TORCH_CHECK(used <= tables.size(1), "a sequence longer than its block table");
    for (int64_t i = 0; i < used; ++i)
      TORCH_CHECK(tp[b * tables.size(1) + i] >= 0 && tp[b * tables.size(1) + i] < capacity_blocks, "block id past the pool");
  }
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    if (q.size(2) == 64)
      decode_attention_impl<scalar_t, 64>(q, k_cache, v_cache, tables, lens, starts, scale, window, out);
    else if (q.size(2) == 128)
      decode_attention_impl<scalar_t, 128>(q, k_cache, v_cache, tables, lens, starts, scale, window, out);
    else
      decode_attention_impl<scalar_t, 0>(q, k_cache, v_cache, tables, lens, starts, scale, window, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(genfleet_cpu, m) {
  m.def("add_rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, float offset) -> (Tensor, Tensor)",
        &add_rms_norm);
  m.def("silu_and_mul(Tensor x) -> Tensor", &silu_and_mul);
  m.def("rotary_embedding(Tensor positions, Tensor q, Tensor k, Tensor table, bool neox) -> (Tensor, Tensor)",
        &rotary_embedding);
  m.def("store_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()", &store_kv);
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
        "Tensor query_start_loc, float scale, int window) -> Tensor",
        &paged_decode_attention);
}
