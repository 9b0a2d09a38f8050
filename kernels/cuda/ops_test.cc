// Every CUDA op against its CPU twin (kernels/cpu/ops.h, kernels/cpu/sampling.h) on random
// inputs with fixed seeds. Both sides see the same bf16-rounded inputs; the CPU computes in
// fp32, the GPU rounds to bf16 where the op's output is bf16. Tolerances:
// - fp32 arithmetic with fp32 outputs (embedding, residual add, RoPE): exact, 1e-6 or 1e-5
//   relative;
// - bf16 outputs (norm, attention, GEMM/SwiGLU through bf16 intermediates):
//   |got - want| <= 2e-2 * |want| + 2e-2 * rms(want);
// - GEMM with fp32 output: 1e-3 relative (accumulation order); router weights 1e-3 absolute;
// - sampling: greedy identical; seeded draws identical in >= 98% of cases (a draw may
//   legitimately differ where u * mass lands within rounding of a cumulative boundary).
// Tests skip with "no CUDA device" where cudaGetDeviceCount fails or returns 0; the counter RNG
// check runs on the host and never skips.
#include "kernels/cuda/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/bf16.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cuda/counter_rng.h"

namespace switchyard {
namespace {

constexpr float kBf16Rel = 2e-2f;

constexpr size_t Idx(int64_t v) { return static_cast<size_t>(v); }

// ---------------------------------------------------------------------------------------------
// Helpers.

template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    if (n_ > 0) {
      EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T)), cudaSuccess);
    }
  }
  explicit DeviceArray(const std::vector<T>& h) : DeviceArray(h.size()) { Upload(h); }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return p_; }
  cuda::bf16* bf() const { return reinterpret_cast<cuda::bf16*>(p_); }  // for uint16_t bits
  void Upload(const std::vector<T>& h) {
    ASSERT_EQ(h.size(), n_);
    ASSERT_EQ(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  size_t n_;
  T* p_ = nullptr;
};

// Random values rounded to bf16; `bits` holds the bf16 encodings, `f` the same values in fp32.
struct Bf16Data {
  std::vector<uint16_t> bits;
  std::vector<float> f;
};
Bf16Data RandomBf16(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, scale);
  Bf16Data out;
  out.bits.resize(n);
  out.f.resize(n);
  for (size_t i = 0; i < n; ++i) {
    out.bits[i] = FloatToBf16(d(rng));
    out.f[i] = Bf16ToFloat(out.bits[i]);
  }
  return out;
}

std::vector<float> RandomF32(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<float> Bf16BitsToFloat(const std::vector<uint16_t>& bits) {
  std::vector<float> f(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) f[i] = Bf16ToFloat(bits[i]);
  return f;
}

WeightMatrix Bf16Matrix(const std::vector<uint16_t>& bits, int rows, int cols, size_t offset = 0) {
  return {DType::kBF16, bits.data() + offset, rows, cols};
}

// |got - want| <= rel * |want| + rel * rms(want), elementwise.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float rel,
                 const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double ss = 0;
  for (float w : want) ss += double{w} * w;
  const float rms = want.empty() ? 0.0f : static_cast<float>(std::sqrt(ss / want.size()));
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float tol = rel * std::abs(want[i]) + rel * rms + 1e-6f;
    if (!(std::abs(got[i] - want[i]) <= tol) && ++bad <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i]
                    << " (tolerance " << tol << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " outside tolerance";
}

void ExpectOk(const absl::Status& st) { ASSERT_TRUE(st.ok()) << st; }

class CudaOpsTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (handle_ != nullptr) cublasDestroy(handle_);
    if (workspace_ != nullptr) cudaFree(workspace_);
  }
  cuda::GemmContext Gemm() {
    if (handle_ == nullptr) {
      EXPECT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS);
      EXPECT_EQ(cudaMalloc(&workspace_, kWorkspace), cudaSuccess);
      EXPECT_TRUE(cuda::BindCublas({handle_, stream_}, workspace_, kWorkspace).ok());
    }
    return {handle_, stream_};
  }
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  static constexpr size_t kWorkspace = size_t{32} << 20;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::mt19937 rng_{1234};
};

// ---------------------------------------------------------------------------------------------
// Elementwise and normalisation.

TEST_F(CudaOpsTest, EmbeddingGathersRowsExactly) {
  const int V = 50, H = 96, T = 7;
  Bf16Data table = RandomBf16(Idx(V) * H, 1.0f, rng_);
  std::vector<int32_t> ids = {0, 49, 3, 3, 17, 42, 1};
  DeviceArray<uint16_t> d_table(table.bits);
  DeviceArray<int32_t> d_ids(ids);
  DeviceArray<float> d_out(Idx(T) * H);
  ExpectOk(cuda::Embedding(
      {.table = d_table.bf(), .ids = d_ids.get(), .num_tokens = T, .hidden = H, .out = d_out.get()},
      stream_));
  std::vector<float> want(Idx(T) * H);
  cpu::Embedding(Bf16Matrix(table.bits, V, H), ids.data(), T, want.data());
  EXPECT_EQ(d_out.Download(), want);
}

TEST_F(CudaOpsTest, AddRmsNormMatchesCpu) {
  const int T = 5, H = 4096;
  const float eps = 1e-5f;
  std::vector<float> x = RandomF32(Idx(T) * H, 1.0f, rng_);
  std::vector<float> res = RandomF32(Idx(T) * H, 0.5f, rng_);
  std::vector<float> w = RandomF32(H, 1.0f, rng_);
  DeviceArray<float> d_x(x), d_res(res), d_w(w);
  DeviceArray<uint16_t> d_out(Idx(T) * H);
  DeviceArray<float> d_out32(Idx(T) * H);
  ExpectOk(cuda::AddRmsNorm({.x = d_x.get(),
                             .residual = d_res.get(),
                             .weight = d_w.get(),
                             .num_rows = T,
                             .hidden = H,
                             .eps = eps,
                             .out = d_out.bf(),
                             .out_f32 = d_out32.get()},
                            stream_));
  std::vector<float> want_x = x, want(Idx(T) * H);
  cpu::AddInPlace(want_x.data(), res.data(), int64_t{T} * H);
  cpu::RmsNorm(want_x.data(), w.data(), T, H, eps, want.data());
  ExpectClose(d_x.Download(), want_x, 1e-6f, "x += residual");
  ExpectClose(Bf16BitsToFloat(d_out.Download()), want, kBf16Rel, "norm");
  ExpectClose(d_out32.Download(), want, 1e-5f, "norm, fp32 copy");

  // A row subset without the residual (the head's final norm).
  std::vector<int32_t> rows = {4, 0, 2};
  DeviceArray<int32_t> d_rows(rows);
  DeviceArray<uint16_t> d_sub(rows.size() * H);
  ExpectOk(cuda::AddRmsNorm({.x = d_x.get(),
                             .weight = d_w.get(),
                             .rows = d_rows.get(),
                             .num_rows = 3,
                             .hidden = H,
                             .eps = eps,
                             .out = d_sub.bf()},
                            stream_));
  std::vector<float> got = Bf16BitsToFloat(d_sub.Download());
  for (int i = 0; i < 3; ++i) {
    ExpectClose(std::vector<float>(got.begin() + i * H, got.begin() + (i + 1) * H),
                std::vector<float>(want.begin() + rows[i] * H, want.begin() + (rows[i] + 1) * H),
                kBf16Rel, "norm of listed row");
  }
}

TEST_F(CudaOpsTest, RopeMatchesCpuAtLargePositions) {
  const int T = 6, n_q = 4, n_kv = 2, D = 128;
  const int stride = (n_q + 2 * n_kv) * D;  // a fused [q | k | v] row
  std::vector<float> x = RandomF32(Idx(T) * stride, 1.0f, rng_);
  std::vector<int32_t> pos = {0, 1, 17, 1000, 16383, 32767};
  std::vector<float> inv_freq(D / 2);
  cpu::RopeInvFreq(D, 1e6, inv_freq.data());
  DeviceArray<float> d_x(x);
  DeviceArray<int32_t> d_pos(pos);
  DeviceArray<float> d_inv(inv_freq);
  ExpectOk(cuda::Rope({.x = d_x.get(),
                       .row_stride = stride,
                       .num_tokens = T,
                       .num_heads = n_q + n_kv,
                       .head_dim = D,
                       .positions = d_pos.get(),
                       .inv_freq = d_inv.get()},
                      stream_));
  // CPU: q and k rotated separately, v untouched.
  std::vector<float> q(Idx(T) * n_q * D), k(Idx(T) * n_kv * D);
  for (int t = 0; t < T; ++t) {
    std::copy_n(&x[Idx(t) * stride], n_q * D, &q[Idx(t) * n_q * D]);
    std::copy_n(&x[Idx(t) * stride + n_q * D], n_kv * D, &k[Idx(t) * n_kv * D]);
  }
  cpu::Rope(q.data(), T, n_q, D, pos.data(), inv_freq.data());
  cpu::Rope(k.data(), T, n_kv, D, pos.data(), inv_freq.data());
  std::vector<float> want = x;
  for (int t = 0; t < T; ++t) {
    std::copy_n(&q[Idx(t) * n_q * D], n_q * D, &want[Idx(t) * stride]);
    std::copy_n(&k[Idx(t) * n_kv * D], n_kv * D, &want[Idx(t) * stride + n_q * D]);
  }
  ExpectClose(d_x.Download(), want, 1e-5f, "rope");
}

TEST_F(CudaOpsTest, SiluGateMatchesFormula) {
  const int rows = 9, F = 40;
  Bf16Data h = RandomBf16(Idx(rows) * 2 * F, 2.0f, rng_);
  DeviceArray<uint16_t> d_h(h.bits), d_out(Idx(rows) * F);
  ExpectOk(cuda::SiluGate({.h = d_h.bf(), .rows = rows, .ffn = F, .out = d_out.bf()}, stream_));
  std::vector<float> want(Idx(rows) * F);
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < F; ++j) {
      const float g = h.f[Idx(r) * 2 * F + j], u = h.f[Idx(r) * 2 * F + F + j];
      want[Idx(r) * F + j] = g / (1.0f + std::exp(-g)) * u;
    }
  }
  ExpectClose(Bf16BitsToFloat(d_out.Download()), want, kBf16Rel, "silu gate");
}

TEST_F(CudaOpsTest, GemmMatchesCpuMatMul) {
  const int T = 37, N = 320, K = 256;
  Bf16Data x = RandomBf16(Idx(T) * K, 1.0f, rng_);
  Bf16Data w = RandomBf16(Idx(N) * K, 0.05f, rng_);
  DeviceArray<uint16_t> d_x(x.bits), d_w(w.bits), d_y16(Idx(T) * N);
  DeviceArray<float> d_y32(Idx(T) * N);
  cuda::GemmContext ctx = Gemm();
  ExpectOk(cuda::Gemm(ctx, {.x = d_x.bf(),
                            .rows = T,
                            .w = d_w.bf(),
                            .n = N,
                            .k = K,
                            .y = d_y32.get(),
                            .out = cuda::GemmOut::kF32}));
  ExpectOk(cuda::Gemm(ctx, {.x = d_x.bf(),
                            .rows = T,
                            .w = d_w.bf(),
                            .n = N,
                            .k = K,
                            .y = d_y16.bf(),
                            .out = cuda::GemmOut::kBf16}));
  std::vector<float> want(Idx(T) * N);
  cpu::MatMul(x.f.data(), T, Bf16Matrix(w.bits, N, K), want.data());
  ExpectClose(d_y32.Download(), want, 1e-3f, "gemm fp32 out");
  ExpectClose(Bf16BitsToFloat(d_y16.Download()), want, kBf16Rel, "gemm bf16 out");
}

// ---------------------------------------------------------------------------------------------
// Paged KV cache and attention.

struct AttnCase {
  int n_heads, n_kv_heads, head_dim, block_size;
  std::vector<int> start_pos, num_tokens;  // per sequence
};

// Writes K/V of every sequence's positions [0, start + n) through shuffled block tables on
// both sides, then runs the prefill kernel (sequences with n > 1) and the decode kernel
// (n == 1) and compares with cpu::Attention.
void RunAttentionCase(const AttnCase& c, cudaStream_t stream, std::mt19937& rng) {
  const int S = static_cast<int>(c.num_tokens.size());
  const int D = c.head_dim, q_dim = c.n_heads * D, kv_dim = c.n_kv_heads * D;
  const int bs = c.block_size;
  int max_blocks = 0, total_blocks = 0, T = 0;
  for (int s = 0; s < S; ++s) {
    const int nb = (c.start_pos[s] + c.num_tokens[s] + bs - 1) / bs;
    max_blocks = std::max(max_blocks, nb);
    total_blocks += nb;
    T += c.num_tokens[s];
  }
  // Shuffled physical blocks, one table row per sequence (stride max_blocks).
  std::vector<int32_t> physical(total_blocks + 3);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  const int num_blocks = static_cast<int>(physical.size());
  std::vector<int32_t> tables(Idx(S) * max_blocks, 0);
  std::vector<int32_t> token_offset(S), start(c.start_pos), ntok(c.num_tokens);
  for (int s = 0, next = 0, off = 0; s < S; ++s) {
    const int nb = (c.start_pos[s] + c.num_tokens[s] + bs - 1) / bs;
    for (int b = 0; b < nb; ++b) tables[Idx(s) * max_blocks + b] = physical[next++];
    token_offset[s] = off;
    off += c.num_tokens[s];
  }
  // Context K/V (positions before start) and this step's rows.
  std::vector<float> cpu_k(Idx(num_blocks) * bs * kv_dim, 0.0f), cpu_v(cpu_k.size(), 0.0f);
  std::vector<uint16_t> gpu_k(cpu_k.size(), 0), gpu_v(cpu_k.size(), 0);
  const cpu::KvLayer layer{cpu_k.data(), cpu_v.data(), bs, kv_dim};
  Bf16Data q = RandomBf16(Idx(T) * q_dim, 1.0f, rng);
  Bf16Data k_new = RandomBf16(Idx(T) * kv_dim, 1.0f, rng);
  Bf16Data v_new = RandomBf16(Idx(T) * kv_dim, 1.0f, rng);
  std::vector<int32_t> slots(T);
  for (int s = 0; s < S; ++s) {
    const int32_t* table = &tables[Idx(s) * max_blocks];
    if (c.start_pos[s] > 0) {
      Bf16Data k_old = RandomBf16(Idx(c.start_pos[s]) * kv_dim, 1.0f, rng);
      Bf16Data v_old = RandomBf16(Idx(c.start_pos[s]) * kv_dim, 1.0f, rng);
      cpu::KvWrite(layer, table, 0, k_old.f.data(), v_old.f.data(), c.start_pos[s]);
      for (int p = 0; p < c.start_pos[s]; ++p) {
        const size_t slot = Idx(static_cast<uint32_t>(table[p / bs])) * bs + p % bs;
        std::copy_n(&k_old.bits[Idx(p) * kv_dim], kv_dim, &gpu_k[slot * kv_dim]);
        std::copy_n(&v_old.bits[Idx(p) * kv_dim], kv_dim, &gpu_v[slot * kv_dim]);
      }
    }
    cpu::KvWrite(layer, table, c.start_pos[s], &k_new.f[Idx(token_offset[s]) * kv_dim],
                 &v_new.f[Idx(token_offset[s]) * kv_dim], c.num_tokens[s]);
    for (int i = 0; i < c.num_tokens[s]; ++i) {
      const int p = c.start_pos[s] + i;
      slots[token_offset[s] + i] = table[p / bs] * bs + p % bs;
    }
  }
  // q and the new K/V rows are fp32 (bf16-representable values, so the cache holds them
  // exactly); the cache and the output are bf16.
  DeviceArray<uint16_t> d_k(gpu_k), d_v(gpu_v), d_out(Idx(T) * q_dim);
  DeviceArray<float> d_q(q.f), d_knew(k_new.f), d_vnew(v_new.f);
  DeviceArray<int32_t> d_slots(slots), d_tables(tables), d_off(token_offset), d_start(start),
      d_ntok(ntok);
  const cuda::PagedKv cache{d_k.bf(), d_v.bf(), bs, kv_dim};
  ExpectOk(cuda::KvWrite({.k = d_knew.get(),
                          .v = d_vnew.get(),
                          .row_stride = kv_dim,
                          .num_tokens = T,
                          .slot_mapping = d_slots.get(),
                          .cache = cache},
                         stream));
  // The written cache equals the CPU one (bf16 values stored exactly).
  {
    std::vector<float> got_k = Bf16BitsToFloat(d_k.Download());
    EXPECT_EQ(got_k, cpu_k) << "KvWrite";
  }
  std::vector<int32_t> tile_seq, tile_row0, decode;
  for (int s = 0; s < S; ++s) {
    if (c.num_tokens[s] == 1) {
      decode.push_back(s);
      continue;
    }
    for (int r = 0; r < c.num_tokens[s]; r += cuda::kPrefillTileRows) {
      tile_seq.push_back(s);
      tile_row0.push_back(r);
    }
  }
  DeviceArray<int32_t> d_tile_seq(tile_seq), d_tile_row0(tile_row0), d_decode(decode);
  const cuda::AttentionParams ap{
      .q = d_q.get(),
      .q_row_stride = q_dim,
      .out = d_out.bf(),
      .out_row_stride = q_dim,
      .heads = {c.n_heads, c.n_kv_heads, D},
      .cache = cache,
      .seqs = {d_off.get(), d_start.get(), d_ntok.get(), d_tables.get(), max_blocks}};
  ExpectOk(cuda::PrefillAttention(
      ap, {d_tile_seq.get(), d_tile_row0.get(), static_cast<int>(tile_seq.size())}, stream));
  ExpectOk(cuda::DecodeAttention(ap, {d_decode.get(), static_cast<int>(decode.size())}, stream));

  const int threads = omp_get_max_threads();
  int max_ctx = 0;
  for (int s = 0; s < S; ++s) max_ctx = std::max(max_ctx, c.start_pos[s] + c.num_tokens[s]);
  std::vector<float> scratch(Idx(threads) * cpu::AttentionScratchFloats(max_ctx));
  std::vector<float> want(Idx(T) * q_dim);
  for (int s = 0; s < S; ++s) {
    cpu::Attention(&q.f[Idx(token_offset[s]) * q_dim], c.num_tokens[s], c.start_pos[s], layer,
                   &tables[Idx(s) * max_blocks], {c.n_heads, c.n_kv_heads, D},
                   &want[Idx(token_offset[s]) * q_dim], scratch.data(), threads);
  }
  ExpectClose(Bf16BitsToFloat(d_out.Download()), want, kBf16Rel, "attention");
}

TEST_F(CudaOpsTest, PrefillAndDecodeAttentionMatchCpu) {
  // Mixtral-like heads; chunked prefill (start > 0), a chunk over several KV tiles, decodes.
  RunAttentionCase({.n_heads = 8,
                    .n_kv_heads = 2,
                    .head_dim = 128,
                    .block_size = 16,
                    .start_pos = {0, 23, 0, 130, 5},
                    .num_tokens = {40, 17, 1, 1, 90}},
                   stream_, rng_);
}

TEST_F(CudaOpsTest, AttentionHandlesSmallAndOddShapes) {
  // brown-moe (head_dim 32) and tiny-odd (head_dim 24, one KV head) shapes, block size 5.
  RunAttentionCase({.n_heads = 8,
                    .n_kv_heads = 2,
                    .head_dim = 32,
                    .block_size = 5,
                    .start_pos = {0, 3, 64},
                    .num_tokens = {3, 1, 33}},
                   stream_, rng_);
  RunAttentionCase({.n_heads = 4,
                    .n_kv_heads = 1,
                    .head_dim = 24,
                    .block_size = 16,
                    .start_pos = {0, 9},
                    .num_tokens = {70, 1}},
                   stream_, rng_);
}

TEST_F(CudaOpsTest, AttentionSupportsHeadDim256) {
  // Needs the dynamic shared memory opt-in (> 48 KiB).
  RunAttentionCase({.n_heads = 2,
                    .n_kv_heads = 1,
                    .head_dim = 256,
                    .block_size = 16,
                    .start_pos = {7, 0},
                    .num_tokens = {20, 1}},
                   stream_, rng_);
}

// ---------------------------------------------------------------------------------------------
// Router and experts.

TEST_F(CudaOpsTest, RouterMatchesCpuTopK) {
  const int T = 64, H = 256, E = 8, K = 2;
  std::vector<float> x = RandomF32(Idx(T) * H, 1.0f, rng_);  // the router reads fp32
  Bf16Data gate = RandomBf16(Idx(E) * H, 0.1f, rng_);
  DeviceArray<float> d_x(x);
  DeviceArray<uint16_t> d_gate(gate.bits);
  DeviceArray<int32_t> d_experts(Idx(T) * K);
  DeviceArray<float> d_weights(Idx(T) * K);
  ExpectOk(cuda::Router({.x = d_x.get(),
                         .gate = d_gate.bf(),
                         .num_tokens = T,
                         .hidden = H,
                         .num_experts = E,
                         .top_k = K,
                         .experts = d_experts.get(),
                         .weights = d_weights.get()},
                        stream_));
  std::vector<float> logits(Idx(T) * E), want_w(Idx(T) * K);
  std::vector<int32_t> want_e(Idx(T) * K);
  cpu::MatMul(x.data(), T, Bf16Matrix(gate.bits, E, H), logits.data());
  cpu::RouterTopK(logits.data(), T, E, K, want_e.data(), want_w.data());
  std::vector<int32_t> got_e = d_experts.Download();
  std::vector<float> got_w = d_weights.Download();
  for (int t = 0; t < T; ++t) {
    // Skip tokens whose k-th and (k+1)-th logits are within accumulation-order noise.
    std::vector<float> sorted(logits.begin() + t * E, logits.begin() + (t + 1) * E);
    std::sort(sorted.rbegin(), sorted.rend());
    if (sorted[K - 1] - sorted[K] < 1e-4f) continue;
    for (int j = 0; j < K; ++j) {
      EXPECT_EQ(got_e[t * K + j], want_e[t * K + j]) << "token " << t << " choice " << j;
      EXPECT_NEAR(got_w[t * K + j], want_w[t * K + j], 1e-3f) << "token " << t;
    }
  }
}

TEST_F(CudaOpsTest, RouterBreaksTiesTowardLowerIds) {
  const int T = 1, H = 64, E = 6, K = 3;
  std::vector<float> x(H, 1.0f);
  std::vector<uint16_t> gate(Idx(E) * H, 0);
  for (int e : {1, 4, 5}) {  // experts 1, 4 and 5 tie for the top; 2 comes next
    for (int h = 0; h < H; ++h) gate[Idx(e) * H + h] = FloatToBf16(0.25f);
  }
  for (int h = 0; h < H; ++h) gate[Idx(2) * H + h] = FloatToBf16(0.125f);
  DeviceArray<float> d_x(x);
  DeviceArray<uint16_t> d_gate(gate);
  DeviceArray<int32_t> d_experts(K);
  DeviceArray<float> d_weights(K);
  ExpectOk(cuda::Router({.x = d_x.get(),
                         .gate = d_gate.bf(),
                         .num_tokens = T,
                         .hidden = H,
                         .num_experts = E,
                         .top_k = K,
                         .experts = d_experts.get(),
                         .weights = d_weights.get()},
                        stream_));
  EXPECT_EQ(d_experts.Download(), (std::vector<int32_t>{1, 4, 5}));
  for (float w : d_weights.Download()) EXPECT_NEAR(w, 1.0f / 3, 1e-6f);
}

struct MoeCase {
  int T, H, F, E, K;
};

// Random distinct top-k choices and weights; experts with no tokens included.
void RandomRouting(const MoeCase& c, std::mt19937& rng, std::vector<int32_t>* experts,
                   std::vector<float>* weights) {
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  experts->resize(Idx(c.T) * c.K);
  weights->resize(experts->size());
  const int pool = std::max(c.K, c.E - 1);  // the last expert never gets a token
  for (int t = 0; t < c.T; ++t) {
    std::vector<int32_t> ids(pool);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    float sum = 0;
    for (int j = 0; j < c.K; ++j) sum += ((*weights)[t * c.K + j] = u(rng));
    for (int j = 0; j < c.K; ++j) {
      (*experts)[t * c.K + j] = ids[j];
      (*weights)[t * c.K + j] /= sum;
    }
  }
}

// The full expert path (permute, FFN, unpermute) in packed and padded mode against
// out[t] = sum_j w[t,j] * cpu::SwiGluExpert(x[t]).
void RunMoeCase(const MoeCase& c, cuda::GemmContext ctx, std::mt19937& rng) {
  const int T = c.T, H = c.H, F = c.F, E = c.E, K = c.K;
  Bf16Data x = RandomBf16(Idx(T) * H, 1.0f, rng);
  Bf16Data w13 = RandomBf16(Idx(E) * 2 * F * H, 0.05f, rng);
  Bf16Data w2 = RandomBf16(Idx(E) * H * F, 0.05f, rng);
  std::vector<int32_t> experts;
  std::vector<float> weights;
  RandomRouting(c, rng, &experts, &weights);

  // CPU reference.
  std::vector<float> want(Idx(T) * H, 0.0f);
  std::vector<float> scratch(Idx(2) * F);
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < K; ++j) {
      const int e = experts[t * K + j];
      const size_t base13 = Idx(static_cast<uint32_t>(e)) * 2 * F * H;
      const float scale = weights[t * K + j];
      cpu::SwiGluExpert(&x.f[Idx(t) * H], 1, Bf16Matrix(w13.bits, F, H, base13),
                        Bf16Matrix(w13.bits, F, H, base13 + Idx(F) * H),
                        Bf16Matrix(w2.bits, H, F, Idx(static_cast<uint32_t>(e)) * H * F),
                        &want[Idx(t) * H], scratch.data(), &scale);
    }
  }
  // Stable grouping the GPU must reproduce: (token, choice) order within each expert.
  std::vector<int32_t> want_counts(E, 0), want_row_token;
  for (int e = 0; e < E; ++e) {
    for (int i = 0; i < T * K; ++i) {
      if (experts[i] == e) {
        ++want_counts[e];
        want_row_token.push_back(i / K);
      }
    }
  }

  const int slots = std::min(E, T * K);
  const size_t max_rows = std::max<size_t>(Idx(T) * K, Idx(slots) * T);
  DeviceArray<uint16_t> d_x(x.bits), d_w13(w13.bits), d_w2(w2.bits), d_rows(max_rows * H),
      d_h13(max_rows * 2 * F), d_act(max_rows * F);
  DeviceArray<float> d_y(max_rows * H), d_weights(weights), d_out(Idx(T) * H);
  DeviceArray<int32_t> d_experts(experts), d_counts(E), d_offsets(E + 1), d_row_token(max_rows),
      d_pair_row(Idx(T) * K);
  DeviceArray<const void*> d_ptrs(6 * Idx(E));
  const void** pp = d_ptrs.get();
  const cuda::BatchedExpertPointers ptrs{pp,         pp + E,     const_cast<void**>(pp + 2 * E),
                                         pp + 3 * E, pp + 4 * E, const_cast<void**>(pp + 5 * E)};
  const cuda::ExpertFfnParams ffn{.w13 = d_w13.bf(),
                                  .w2 = d_w2.bf(),
                                  .num_experts = E,
                                  .hidden = H,
                                  .ffn = F,
                                  .rows = d_rows.bf(),
                                  .h13 = d_h13.bf(),
                                  .act = d_act.bf(),
                                  .y = d_y.get()};
  const cuda::MoeUnpermuteParams unpermute{.y = d_y.get(),
                                           .pair_row = d_pair_row.get(),
                                           .weights = d_weights.get(),
                                           .num_tokens = T,
                                           .top_k = K,
                                           .hidden = H,
                                           .out = d_out.get()};
  // Packed.
  ExpectOk(cuda::MoePermute({.x = d_x.bf(),
                             .experts = d_experts.get(),
                             .num_tokens = T,
                             .top_k = K,
                             .ffn = ffn,
                             .counts = d_counts.get(),
                             .offsets = d_offsets.get(),
                             .row_token = d_row_token.get(),
                             .pair_row = d_pair_row.get()},
                            ctx.stream));
  std::vector<int32_t> counts = d_counts.Download();
  EXPECT_EQ(counts, want_counts);
  std::vector<int32_t> row_token = d_row_token.Download();
  row_token.resize(want_row_token.size());
  EXPECT_EQ(row_token, want_row_token) << "grouping is not stable";
  ExpectOk(cuda::ExpertFfnPacked(ctx, ffn, counts.data()));
  ExpectOk(cuda::MoeUnpermute(unpermute, ctx.stream));
  ExpectClose(d_out.Download(), want, kBf16Rel, "moe packed");

  // Padded slots + batched GEMMs (the graph path), capacity T.
  ExpectOk(cuda::MoePermute({.x = d_x.bf(),
                             .experts = d_experts.get(),
                             .num_tokens = T,
                             .top_k = K,
                             .capacity = T,
                             .num_slots = slots,
                             .ffn = ffn,
                             .counts = d_counts.get(),
                             .offsets = d_offsets.get(),
                             .row_token = d_row_token.get(),
                             .pair_row = d_pair_row.get(),
                             .pointers = ptrs},
                            ctx.stream));
  ExpectOk(cuda::ExpertFfnBatched(ctx, ffn, ptrs, slots, T));
  ExpectOk(cuda::MoeUnpermute(unpermute, ctx.stream));
  ExpectClose(d_out.Download(), want, kBf16Rel, "moe padded");
}

TEST_F(CudaOpsTest, MoeExpertsMatchCpuPackedAndPadded) {
  RunMoeCase({.T = 37, .H = 256, .F = 512, .E = 8, .K = 2}, Gemm(), rng_);
  RunMoeCase({.T = 1, .H = 256, .F = 512, .E = 8, .K = 2}, Gemm(), rng_);  // decode at batch 1
  RunMoeCase({.T = 20, .H = 96, .F = 64, .E = 6, .K = 3}, Gemm(), rng_);   // tiny-odd shapes
}

TEST_F(CudaOpsTest, MoePermuteIsStableOverManyChunks) {
  // 4096 tokens top-2: 8 chunks of the index kernel's 1024 threads.
  RunMoeCase({.T = 4096, .H = 64, .F = 32, .E = 8, .K = 2}, Gemm(), rng_);
}

// ---------------------------------------------------------------------------------------------
// Sampling.

TEST(CounterRng, MatchesCpuUniformFromCounter) {
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefull, ~0ull}) {
    for (uint64_t step : {0ull, 1ull, 2ull, 1000ull, ~0ull}) {
      EXPECT_EQ(cuda::CounterUniform(seed, step), UniformFromCounter(seed, step))
          << "seed " << seed << " step " << step;
    }
  }
}

struct SampleRun {
  std::vector<int32_t> gpu, cpu;
};

SampleRun RunSampling(const std::vector<float>& logits, int vocab,
                      const std::vector<cuda::SampleRequest>& reqs, cudaStream_t stream) {
  SampleRun run;
  DeviceArray<float> d_logits(logits);
  DeviceArray<cuda::SampleRequest> d_reqs(reqs);
  DeviceArray<int32_t> d_tokens(reqs.size());
  EXPECT_TRUE(cuda::Sample({.logits = d_logits.get(),
                            .vocab = vocab,
                            .requests = d_reqs.get(),
                            .num_requests = static_cast<int>(reqs.size()),
                            .tokens = d_tokens.get()},
                           stream)
                  .ok());
  run.gpu = d_tokens.Download();
  SamplingScratch scratch;
  for (const cuda::SampleRequest& r : reqs) {
    const SamplingParams sp{
        .temperature = r.temperature, .top_k = r.top_k, .top_p = r.top_p, .seed = r.seed};
    run.cpu.push_back(SampleToken(&logits[Idx(static_cast<uint32_t>(r.row)) * vocab], vocab, sp,
                                  r.step, &scratch));
  }
  return run;
}

TEST_F(CudaOpsTest, GreedySamplingMatchesCpuAndBreaksTiesLow) {
  const int V = 32000, R = 4;
  std::vector<float> logits = RandomF32(Idx(R) * V, 2.0f, rng_);
  logits[Idx(3) * V + 777] = 50.0f;  // row 3: a tie between 777 and 31000, 777 wins
  logits[Idx(3) * V + 31000] = 50.0f;
  std::vector<cuda::SampleRequest> reqs;
  for (int r = 0; r < R; ++r) reqs.push_back({.row = r});
  SampleRun run = RunSampling(logits, V, reqs, stream_);
  EXPECT_EQ(run.gpu, run.cpu);
  EXPECT_EQ(run.gpu[3], 777);
}

TEST_F(CudaOpsTest, SeededSamplingMatchesCpu) {
  const int V = 4096, R = 8;
  std::vector<float> logits = RandomF32(Idx(R) * V, 3.0f, rng_);
  struct Filter {
    float temperature;
    int top_k;
    float top_p;
  };
  for (const Filter f : {Filter{1.0f, 0, 1.0f}, Filter{0.7f, 40, 1.0f}, Filter{1.0f, 0, 0.9f},
                         Filter{0.8f, 50, 0.95f}, Filter{1.3f, 1, 1.0f}}) {
    std::vector<cuda::SampleRequest> reqs;
    for (int i = 0; i < 256; ++i) {
      reqs.push_back({.row = i % R,
                      .top_k = f.top_k,
                      .temperature = f.temperature,
                      .top_p = f.top_p,
                      .seed = static_cast<uint64_t>(i / R),
                      .step = uint64_t(i)});
    }
    SampleRun a = RunSampling(logits, V, reqs, stream_);
    SampleRun b = RunSampling(logits, V, reqs, stream_);
    EXPECT_EQ(a.gpu, b.gpu) << "the device draw is not deterministic";
    int same = 0;
    for (size_t i = 0; i < reqs.size(); ++i) same += a.gpu[i] == a.cpu[i];
    EXPECT_GE(same, static_cast<int>(reqs.size() * 98 / 100))
        << "temperature " << f.temperature << " top_k " << f.top_k << " top_p " << f.top_p;
  }
}

}  // namespace
}  // namespace switchyard
