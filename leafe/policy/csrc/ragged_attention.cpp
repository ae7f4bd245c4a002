// Attention of ragged groups of query rows, each group against its own slot's keys/values, on
// the CPU in float32: the native engine's decode steps (a slot's last token plus its drafts) and
// prompt pieces, in one call each, with no padding of rows or keys and no mask tensor.
//
// q: (T, kv_heads, G, hd), each token's heads contiguous (any stride between tokens): T tokens,
//   the G query heads that share each key/value head.
// keys, values: (slots, kv_heads, capacity, hd), last dimension contiguous.
// group_slot: (N,) int64, the slot of each group; group_first: (N + 1,) int64, its tokens
//   group_first[n] .. group_first[n + 1] - 1.
// last: (T,) int64, the last key position each token sees (it sees keys start .. last[t]).
// Returns out (T, kv_heads, G, hd) and lse (T, kv_heads, G): softmax(scale * q k^T) v over those
// keys and the natural log of the softmax's denominator (of the scaled scores), as the CPU
// flash kernel returns them.
//
// Each task takes up to LANES query rows of one group and key/value head, one row per vector
// lane: scores are (keys, LANES), one vector per key, so the softmax's max and sum run across
// vectors, and both products are broadcast-FMAs (a key's or value's element times a vector of
// rows). Written with GCC/Clang vector extensions, which the compiler maps onto the machine's
// vectors (built with -march=native).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// One query row per lane of the machine's widest vector: a vector type twice the machine's width
// is slow (16 lanes on an AVX2 Zen 3 ran the own-suffix pass 6x slower than 8, likely because GCC
// lowers some of its operations element-wise; bench/kernel_lanes.py, BENCHMARKS session 30).
// -DLEAFE_LANES=n builds another width, for that benchmark.
#if defined(LEAFE_LANES)
constexpr int LANES = LEAFE_LANES;
#elif defined(__AVX512F__)
constexpr int LANES = 16;
#elif defined(__AVX2__)
constexpr int LANES = 8;
#else
constexpr int LANES = 4;
#endif
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
constexpr int KEYS_AT_ONCE = 8;   // independent accumulators in the score loop
constexpr int DIMS_AT_ONCE = 8;   // ... and in the value loop
constexpr int PREFETCH_KEYS = 16;  // keys/values requested from memory this many keys ahead

inline vf splat(float x) { return vf{} + x; }

// exp(x) for x <= 0 lanewise (0 below -87): Cody-Waite range reduction and a degree-6 polynomial
// (Cephes expf's coefficients).
inline vf exp_nonpositive(vf x) {
  const vi tiny = x < -87.0f;
  x = tiny ? splat(-87.0f) : x;
  const vf y = x * 1.44269504088896341f + 0.5f;
  vi k = __builtin_convertvector(y, vi);  // truncation; floor for negative y below
  vf kf = __builtin_convertvector(k, vf);
  const vi above = kf > y;
  k += above;  // -1 where true
  kf = __builtin_convertvector(k, vf);
  vf r = x - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vf two_k = (vf)((k + 127) << 23);
  return tiny ? splat(0.0f) : p * two_k;
}

// One task: rows (<= LANES) of one group and head. qt: (HD, LANES) the rows' queries, transposed;
// limits: per lane, how many keys the row sees (0 for unused lanes); reach: the most of them.
// k, v: the first key/value of the slot's head, consecutive keys kv_stride floats apart.
// ot: (HD, LANES) output, transposed; lse: (LANES,).
template <int HD>
void attend(const vf* qt, const vi& limits, int64_t reach, const float* k, const float* v, int64_t kv_stride,
            float scale, vf* ot, vf& lse, std::vector<vf>& scores) {
  scores.resize(static_cast<size_t>(reach));
  vf* s = scores.data();
  int64_t j = 0;
  for (; j + KEYS_AT_ONCE <= reach; j += KEYS_AT_ONCE) {
    vf acc[KEYS_AT_ONCE] = {};
    const float* kj = k + j * kv_stride;
    const float* ahead = kj + PREFETCH_KEYS * kv_stride;
    for (int i = 0; i < KEYS_AT_ONCE; ++i)
      for (int c = 0; c < HD; c += 16) __builtin_prefetch(ahead + i * kv_stride + c);
    for (int d = 0; d < HD; ++d) {
      const vf qd = qt[d];
      for (int i = 0; i < KEYS_AT_ONCE; ++i) acc[i] += qd * kj[i * kv_stride + d];
    }
    for (int i = 0; i < KEYS_AT_ONCE; ++i) s[j + i] = acc[i] * scale;
  }
  for (; j < reach; ++j) {
    vf acc = {};
    const float* kj = k + j * kv_stride;
    for (int d = 0; d < HD; ++d) acc += qt[d] * kj[d];
    s[j] = acc * scale;
  }
  // Softmax across keys, lanewise; a lane's keys past its limit get weight 0.
  vf top = splat(-INFINITY);
  for (j = 0; j < reach; ++j) {
    const vi seen = limits > static_cast<int32_t>(j);
    top = seen ? (s[j] > top ? s[j] : top) : top;
  }
  const vi used = limits > 0;
  top = used ? top : splat(0.0f);
  vf total = {};
  for (j = 0; j < reach; ++j) {
    const vi seen = limits > static_cast<int32_t>(j);
    const vf w = seen ? exp_nonpositive(s[j] - top) : splat(0.0f);
    s[j] = w;
    total += w;
  }
  for (int d0 = 0; d0 < HD; d0 += DIMS_AT_ONCE) {
    vf acc[DIMS_AT_ONCE] = {};
    for (j = 0; j < reach; ++j) {
      const vf w = s[j];
      const float* vj = v + j * kv_stride + d0;
      if (d0 == 0)  // the first pass over the values brings them in
        for (int c = 0; c < HD; c += 16) __builtin_prefetch(vj + PREFETCH_KEYS * kv_stride + c);
      for (int i = 0; i < DIMS_AT_ONCE; ++i) acc[i] += w * vj[i];
    }
    const vf inv = used ? 1.0f / total : splat(0.0f);
    for (int i = 0; i < DIMS_AT_ONCE; ++i) ot[d0 + i] = acc[i] * inv;
  }
  for (int lane = 0; lane < LANES; ++lane) lse[lane] = used[lane] ? top[lane] + std::log(total[lane]) : 0.0f;
}

// The kernel for one head size HD: checks done by ragged_attention below.
template <int HD>
void attend_all(const float* qp, int64_t q_token_stride, const float* kp, const float* vp, int64_t ks0, int64_t ks1,
                int64_t ks2, const int64_t* slot_p, const int64_t* first_p, const int64_t* last_p, int64_t kv_heads,
                int64_t group, int64_t start, float scale, const std::vector<int64_t>& tasks, float* op, float* lp) {
  at::parallel_for(0, static_cast<int64_t>(tasks.size() / 4), 1, [&](int64_t lo, int64_t hi) {
    std::vector<vf> scores;
    vf qt[HD], ot[HD];
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = tasks[4 * t], h = tasks[4 * t + 1], r0 = tasks[4 * t + 2], rows = tasks[4 * t + 3];
      const int64_t token0 = first_p[n];
      vi limits = {};
      int64_t reach = 0;
      for (int d = 0; d < HD; ++d) qt[d] = vf{};
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = token0 + (r0 + r) / group, g = (r0 + r) % group;
        const int64_t seen = std::max<int64_t>(last_p[token] + 1 - start, 0);
        limits[r] = static_cast<int32_t>(seen);
        reach = std::max(reach, seen);
        const float* row = qp + token * q_token_stride + (h * group + g) * HD;
        for (int d = 0; d < HD; ++d) qt[d][r] = row[d];
      }
      const int64_t base = slot_p[n] * ks0 + h * ks1 + start * ks2;
      vf row_lse;
      attend<HD>(qt, limits, reach, kp + base, vp + base, ks2, scale, ot, row_lse, scores);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = token0 + (r0 + r) / group, g = (r0 + r) % group;
        float* row = op + ((token * kv_heads + h) * group + g) * HD;
        for (int d = 0; d < HD; ++d) row[d] = ot[d][r];
        lp[(token * kv_heads + h) * group + g] = row_lse[r];
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> ragged_attention(torch::Tensor q, torch::Tensor keys, torch::Tensor values,
                                            torch::Tensor group_slot, torch::Tensor group_first, torch::Tensor last,
                                            int64_t start, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && keys.dtype() == torch::kFloat32 && values.dtype() == torch::kFloat32,
              "ragged_attention: float32 only");
  TORCH_CHECK(q.dim() == 4 && q.stride(3) == 1 && q.stride(2) == q.size(3) && q.stride(1) == q.size(2) * q.size(3),
              "ragged_attention: q must be (T, kv_heads, G, hd) with each token's heads contiguous");
  TORCH_CHECK(keys.dim() == 4 && keys.stride(3) == 1 && values.strides() == keys.strides() && values.sizes() == keys.sizes(),
              "ragged_attention: keys/values (slots, kv_heads, capacity, hd) with the same strides, the last one 1");
  const int64_t tokens = q.size(0), kv_heads = q.size(1), group = q.size(2), hd = q.size(3);
  TORCH_CHECK((hd == 64 || hd == 128) && keys.size(3) == hd && keys.size(1) == kv_heads,
              "ragged_attention: head_dim 64 or 128, and matching key/value heads, only");
  auto slot_of = group_slot.to(torch::kInt64).contiguous();
  auto first = group_first.to(torch::kInt64).contiguous();
  auto lasts = last.to(torch::kInt64).contiguous();
  const int64_t groups = slot_of.size(0);
  TORCH_CHECK(first.size(0) == groups + 1 && lasts.size(0) == tokens, "ragged_attention: bad group or last sizes");
  const int64_t* slot_p = slot_of.data_ptr<int64_t>();
  const int64_t* first_p = first.data_ptr<int64_t>();
  const int64_t* last_p = lasts.data_ptr<int64_t>();
  TORCH_CHECK(first_p[0] == 0 && first_p[groups] == tokens, "ragged_attention: group_first must run from 0 to T");
  auto out = torch::empty({tokens, kv_heads, group, hd}, q.options());
  auto lse = torch::empty({tokens, kv_heads, group}, q.options());
  // Tasks: (group, head, first row, rows); a group's rows are numbered token-major.
  std::vector<int64_t> tasks;
  for (int64_t n = 0; n < groups; ++n) {
    TORCH_CHECK(slot_p[n] >= 0 && slot_p[n] < keys.size(0), "ragged_attention: slot out of range");
    const int64_t rows = (first_p[n + 1] - first_p[n]) * group;
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t r = 0; r < rows; r += LANES) tasks.insert(tasks.end(), {n, h, r, std::min<int64_t>(LANES, rows - r)});
  }
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(last_p[t] < keys.size(2), "ragged_attention: a position past the keys' capacity");
  pybind11::gil_scoped_release no_gil;  // other Python threads run while this one computes
  auto run = hd == 64 ? attend_all<64> : attend_all<128>;
  run(q.data_ptr<float>(), q.stride(0), keys.data_ptr<float>(), values.data_ptr<float>(), keys.stride(0), keys.stride(1),
      keys.stride(2), slot_p, first_p, last_p, kv_heads, group, start, static_cast<float>(scale), tasks,
      out.data_ptr<float>(), lse.data_ptr<float>());
  return {out, lse};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("ragged_attention", &ragged_attention); }
