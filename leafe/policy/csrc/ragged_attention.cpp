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
// Each task takes up to LANES query rows of one group and key/value head (ROW_VECTORS x LANES for
// a group of more rows than one vector holds), one row per vector lane: scores are one vector of
// rows per key, so the softmax's max and sum run across vectors, and both products are
// broadcast-FMAs (a key's or value's element times a vector of rows). Written with GCC/Clang
// vector extensions, which the compiler maps onto the machine's vectors (built with
// -march=native). Two threads or more take tasks costliest first from a shared counter.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
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
constexpr int PREFETCH_KEYS = 16;  // keys/values requested from memory this many keys ahead
// Values per block of the value loop (below): 16 KiB, 64 keys of head size 64, in a 32 KiB L1 cache
// next to their weights. -DLEAFE_VALUE_BLOCK_FLOATS=n builds another size, for bench/kernel_lanes.py.
#if defined(LEAFE_VALUE_BLOCK_FLOATS)
constexpr int VALUE_BLOCK_FLOATS = LEAFE_VALUE_BLOCK_FLOATS;
#else
constexpr int VALUE_BLOCK_FLOATS = 4096;
#endif

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

// Query rows per task: up to ROW_VECTORS vectors of LANES rows. A group with more rows than one
// vector holds (prompt pieces: ~66 tokens x 3 heads; decode steps with drafts: up to 15) is
// attended ROW_VECTORS vectors at a time, so each key and value read from memory or cache feeds
// that many more FMAs (one vector of rows per task loads a key element per FMA, which bounds it at
// about half the FMA peak). -DLEAFE_ROW_VECTORS=1 builds the one-vector form, for bench/kernel_lanes.py.
#if defined(LEAFE_ROW_VECTORS)
constexpr int ROW_VECTORS = LEAFE_ROW_VECTORS;
#else
constexpr int ROW_VECTORS = 2;
#endif
static_assert(ROW_VECTORS == 1 || ROW_VECTORS == 2, "LEAFE_ROW_VECTORS: 1 or 2");

// Vectors of rows per task for a group of this many query rows.
inline int row_vectors(int64_t rows) { return rows > LANES ? ROW_VECTORS : 1; }

// Accumulators in the score loop (keys x RV vectors) and in the value loop (dims x RV vectors):
// as many as the registers hold next to the operands (16 vector registers below AVX-512, 32 with it).
template <int RV>
constexpr int keys_at_once() { return RV == 1 || LANES == 16 ? 8 : 6; }
template <int RV>
constexpr int dims_at_once() { return RV == 1 || LANES == 16 ? 8 : 4; }

// One task: rows (<= RV * LANES) of one group and head, row r in lane r % LANES of vector r / LANES.
// qt: (HD, RV) vectors, the rows' queries transposed; limits: (RV,) per lane, how many keys the
// row sees (0 for unused lanes); reach: the most of them. k, v: the first key/value of the slot's
// head, consecutive keys kv_stride floats apart. ot: (HD, RV) vectors, the output transposed;
// lse: (RV,). Each row's sums run in the same order for any RV (results agree within float
// rounding: the compiler may contract other products into FMAs).
template <int HD, int RV>
void attend(const vf* qt, const vi* limits, int64_t reach, const float* k, const float* v, int64_t kv_stride,
            float scale, vf* ot, vf* lse, std::vector<vf>& scores) {
  constexpr int KEYS = keys_at_once<RV>(), DIMS = dims_at_once<RV>();
  static_assert(HD % DIMS == 0, "head size a multiple of the value loop's width");
  scores.resize(static_cast<size_t>(reach) * RV);
  vf* s = scores.data();  // (reach, RV)
  int64_t j = 0;
  for (; j + KEYS <= reach; j += KEYS) {
    vf acc[KEYS][RV] = {};
    const float* kj = k + j * kv_stride;
    const float* ahead = kj + PREFETCH_KEYS * kv_stride;
    for (int i = 0; i < KEYS; ++i)
      for (int c = 0; c < HD; c += 16) __builtin_prefetch(ahead + i * kv_stride + c);
    for (int d = 0; d < HD; ++d) {
      vf qd[RV];
      for (int r = 0; r < RV; ++r) qd[r] = qt[d * RV + r];
      for (int i = 0; i < KEYS; ++i) {
        const float kd = kj[i * kv_stride + d];
        for (int r = 0; r < RV; ++r) acc[i][r] += qd[r] * kd;
      }
    }
    for (int i = 0; i < KEYS; ++i)
      for (int r = 0; r < RV; ++r) s[(j + i) * RV + r] = acc[i][r] * scale;
  }
  for (; j < reach; ++j) {
    vf acc[RV] = {};
    const float* kj = k + j * kv_stride;
    for (int d = 0; d < HD; ++d)
      for (int r = 0; r < RV; ++r) acc[r] += qt[d * RV + r] * kj[d];
    for (int r = 0; r < RV; ++r) s[j * RV + r] = acc[r] * scale;
  }
  // Softmax across keys, lanewise; a lane's keys past its limit get weight 0.
  vf total[RV], inv[RV];
  for (int r = 0; r < RV; ++r) {
    vf top = splat(-INFINITY);
    for (j = 0; j < reach; ++j) {
      const vi seen = limits[r] > static_cast<int32_t>(j);
      const vf x = s[j * RV + r];
      top = seen ? (x > top ? x : top) : top;
    }
    const vi used = limits[r] > 0;
    top = used ? top : splat(0.0f);
    total[r] = vf{};
    for (j = 0; j < reach; ++j) {
      const vi seen = limits[r] > static_cast<int32_t>(j);
      const vf w = seen ? exp_nonpositive(s[j * RV + r] - top) : splat(0.0f);
      s[j * RV + r] = w;
      total[r] += w;
    }
    inv[r] = used ? 1.0f / total[r] : splat(0.0f);
    for (int lane = 0; lane < LANES; ++lane) lse[r][lane] = used[lane] ? top[lane] + std::log(total[r][lane]) : 0.0f;
  }
  // The value loop makes HD / DIMS passes over the keys: it runs over blocks of keys whose values
  // and weights stay in the L1 cache across the passes, and sums into ot.
  constexpr int64_t BLOCK = std::max(VALUE_BLOCK_FLOATS / HD, 1);
  for (int64_t j0 = 0; j0 < reach; j0 += BLOCK) {
    const int64_t j1 = std::min<int64_t>(reach, j0 + BLOCK);
    for (int d0 = 0; d0 < HD; d0 += DIMS) {
      vf acc[DIMS][RV] = {};
      if (j0 > 0)
        for (int i = 0; i < DIMS; ++i)
          for (int r = 0; r < RV; ++r) acc[i][r] = ot[(d0 + i) * RV + r];
      for (j = j0; j < j1; ++j) {
        vf w[RV];
        for (int r = 0; r < RV; ++r) w[r] = s[j * RV + r];
        const float* vj = v + j * kv_stride + d0;
        if (d0 == 0)  // the first pass over the values brings them in
          for (int c = 0; c < HD; c += 16) __builtin_prefetch(vj + PREFETCH_KEYS * kv_stride + c);
        for (int i = 0; i < DIMS; ++i) {
          const float vd = vj[i];
          for (int r = 0; r < RV; ++r) acc[i][r] += w[r] * vd;
        }
      }
      for (int i = 0; i < DIMS; ++i)
        for (int r = 0; r < RV; ++r) ot[(d0 + i) * RV + r] = acc[i][r];
    }
  }
  for (int d = 0; d < HD; ++d)
    for (int r = 0; r < RV; ++r) ot[d * RV + r] = reach > 0 ? ot[d * RV + r] * inv[r] : vf{};
}

// A task: rows r0 .. r0 + rows - 1 of group n (numbered token-major) against key/value head h;
// cost: its vectors of rows times the keys its group reads, to hand out the costliest tasks first.
struct Task {
  int64_t n, h, r0, rows, cost;
};

// The kernel for one head size HD: checks done by ragged_attention below. A task of more rows than
// one vector holds runs with ROW_VECTORS vectors, a smaller one with one. Threads take tasks from a
// shared counter, costliest first: a static split of tasks whose key counts differ by 4x (pieces at
// positions 260 .. 980) left one of two threads idle a fifth of the time.
template <int HD>
void attend_all(const float* qp, int64_t q_token_stride, const float* kp, const float* vp, int64_t ks0, int64_t ks1,
                int64_t ks2, const int64_t* slot_p, const int64_t* first_p, const int64_t* last_p, int64_t kv_heads,
                int64_t group, int64_t start, float scale, const std::vector<Task>& tasks, float* op, float* lp) {
  const int64_t count = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), count), 1, [&](int64_t, int64_t) {
    std::vector<vf> scores;
    vf qt[HD * ROW_VECTORS], ot[HD * ROW_VECTORS];
    for (int64_t t = next++; t < count; t = next++) {
      const int64_t n = tasks[t].n, h = tasks[t].h, r0 = tasks[t].r0, rows = tasks[t].rows;
      const int rv = row_vectors(rows);
      const int64_t token0 = first_p[n];
      vi limits[ROW_VECTORS] = {};
      int64_t reach = 0;
      for (int i = 0; i < HD * rv; ++i) qt[i] = vf{};
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = token0 + (r0 + r) / group, g = (r0 + r) % group;
        const int64_t seen = std::max<int64_t>(last_p[token] + 1 - start, 0);
        const int64_t vec = r / LANES, lane = r % LANES;
        limits[vec][lane] = static_cast<int32_t>(seen);
        reach = std::max(reach, seen);
        const float* row = qp + token * q_token_stride + (h * group + g) * HD;
        for (int d = 0; d < HD; ++d) qt[d * rv + vec][lane] = row[d];
      }
      const int64_t base = slot_p[n] * ks0 + h * ks1 + start * ks2;
      vf row_lse[ROW_VECTORS];
      if (rv == 1)
        attend<HD, 1>(qt, limits, reach, kp + base, vp + base, ks2, scale, ot, row_lse, scores);
      else
        attend<HD, ROW_VECTORS>(qt, limits, reach, kp + base, vp + base, ks2, scale, ot, row_lse, scores);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = token0 + (r0 + r) / group, g = (r0 + r) % group;
        const int64_t vec = r / LANES, lane = r % LANES;
        float* row = op + ((token * kv_heads + h) * group + g) * HD;
        for (int d = 0; d < HD; ++d) row[d] = ot[d * rv + vec][lane];
        lp[(token * kv_heads + h) * group + g] = row_lse[vec][lane];
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
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(last_p[t] < keys.size(2), "ragged_attention: a position past the keys' capacity");
  std::vector<Task> tasks;
  for (int64_t n = 0; n < groups; ++n) {
    TORCH_CHECK(slot_p[n] >= 0 && slot_p[n] < keys.size(0), "ragged_attention: slot out of range");
    const int64_t rows = (first_p[n + 1] - first_p[n]) * group;
    const int64_t per_task = row_vectors(rows) * LANES;
    int64_t reach = 1;  // the group's: its chunks keep their order, and so reuse keys in cache
    for (int64_t token = first_p[n]; token < first_p[n + 1]; ++token) reach = std::max(reach, last_p[token] + 1 - start);
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t r = 0; r < rows; r += per_task) {
        const int64_t taken = std::min<int64_t>(per_task, rows - r);
        tasks.push_back({n, h, r, taken, row_vectors(taken) * reach});
      }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  pybind11::gil_scoped_release no_gil;  // other Python threads run while this one computes
  auto run = hd == 64 ? attend_all<64> : attend_all<128>;
  run(q.data_ptr<float>(), q.stride(0), keys.data_ptr<float>(), values.data_ptr<float>(), keys.stride(0), keys.stride(1),
      keys.stride(2), slot_p, first_p, last_p, kv_heads, group, start, static_cast<float>(scale), tasks,
      out.data_ptr<float>(), lse.data_ptr<float>());
  return {out, lse};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("ragged_attention", &ragged_attention); }
