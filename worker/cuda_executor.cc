// CudaExecutor: the whole model on one GPU. See worker/cuda_executor.h for the contract. The
// plan rules (ValidatePlan, HeadRows, ReturnedLogitRows) are worker/step.h's; the forward pass
// is the CPU stage backend's sequence of operations on the device kernels (until the CUDA stage
// backend replaces this executor, see docs/architecture.md "GPU path").
#include "worker/cuda_executor.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "worker/kv_cache.h"

namespace switchyard {
namespace {

using cuda::bf16;
using cuda::CudaCheck;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper
constexpr size_t kConvertChunk = size_t{1} << 22;           // elements per host conversion
// The KV cache holds bf16 K and V: the element type ModelSession sizes the pool for.
static_assert(KvElementBytes(kCudaKvDType) == sizeof(bf16));

// Device allocations owned together (cudaMalloc aligns to 256 bytes).
class DeviceMemory {
 public:
  DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  absl::Status Alloc(size_t n, T** out) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(n, 1) * sizeof(T);
    RETURN_IF_ERROR(
        CudaCheck(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc(", bytes, " bytes)").c_str()));
    ptrs_.push_back(p);
    bytes_ += bytes;
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }
  uint64_t bytes() const { return bytes_; }

 private:
  std::vector<void*> ptrs_;
  uint64_t bytes_ = 0;
};

// Copies a weight matrix to `dst` as bf16 (other stored types are converted on the host).
absl::Status UploadMatrix(const WeightMatrix& m, bf16* dst) {
  const size_t n = static_cast<size_t>(m.rows) * m.cols;
  if (m.dtype == DType::kBF16) {
    return CudaCheck(cudaMemcpy(dst, m.data, n * sizeof(uint16_t), cudaMemcpyHostToDevice),
                     "upload weights");
  }
  std::vector<uint16_t> tmp(std::min(n, kConvertChunk));
  for (size_t i = 0; i < n; i += kConvertChunk) {
    const size_t c = std::min(kConvertChunk, n - i);
    for (size_t j = 0; j < c; ++j) {
      const float v = m.dtype == DType::kF32
                          ? static_cast<const float*>(m.data)[i + j]
                          : HalfToFloat(static_cast<const uint16_t*>(m.data)[i + j]);
      tmp[j] = FloatToBf16(v);
    }
    RETURN_IF_ERROR(
        CudaCheck(cudaMemcpy(dst + i, tmp.data(), c * sizeof(uint16_t), cudaMemcpyHostToDevice),
                  "upload weights"));
  }
  return absl::OkStatus();
}

absl::Status UploadFloats(const std::vector<float>& v, float* dst) {
  return CudaCheck(cudaMemcpy(dst, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice),
                   "upload norms");
}

// The sizes of one step as the device sees it (sequences with no tokens are left out).
struct StepShape {
  int T = 0;       // token rows
  int S = 0;       // sequences
  int stride = 0;  // block table entries per sequence
  int R = 0;       // head rows
  int NT = 0;      // prefill tiles
  int ND = 0;      // decode sequences
  int NR = 0;      // sampling requests
};

// Byte offsets of the step's inputs inside the metadata buffer (host staging and device copy
// share it). A pure function of the shape: a decode step at batch B always has the same one,
// which is what lets a captured graph read a buffer refreshed before every launch.
struct MetaLayout {
  size_t tokens = 0, positions = 0, slots = 0;
  size_t seq_offset = 0, seq_start = 0, seq_ntok = 0, tables = 0;
  size_t head_rows = 0, tile_seq = 0, tile_row0 = 0, decode_seq = 0, requests = 0;
  size_t bytes = 0;

  static MetaLayout For(const StepShape& s) {
    MetaLayout m;
    size_t off = 0;
    auto take = [&off](size_t bytes) {
      off = (off + 15) / 16 * 16;
      const size_t at = off;
      off += bytes;
      return at;
    };
    const size_t i32 = sizeof(int32_t);
    m.tokens = take(i32 * s.T);
    m.positions = take(i32 * s.T);
    m.slots = take(i32 * s.T);
    m.seq_offset = take(i32 * s.S);
    m.seq_start = take(i32 * s.S);
    m.seq_ntok = take(i32 * s.S);
    m.tables = take(i32 * s.S * static_cast<size_t>(s.stride));
    m.head_rows = take(i32 * s.R);
    m.tile_seq = take(i32 * s.NT);
    m.tile_row0 = take(i32 * s.NT);
    m.decode_seq = take(i32 * s.ND);
    m.requests = take(sizeof(cuda::SampleRequest) * s.NR);
    m.bytes = (off + 15) / 16 * 16;
    return m;
  }
};

class CudaExecutor final : public CudaStepExecutor {
 public:
  CudaExecutor(const ModelWeights& weights, const KvPoolOptions& kv, const ForwardLimits& limits,
               const CudaExecutorOptions& options);
  ~CudaExecutor() override;
  absl::Status Init();

  absl::Status Execute(const StepPlan& plan, StepResult* result) override;
  bool records_routing() const override { return false; }
  int max_step_tokens() const override { return limits_.max_tokens; }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override;
  const CudaExecutorStats& stats() const override { return stats_; }
  uint64_t device_bytes() const override { return mem_.bytes(); }

 private:
  struct Layer {
    bf16* wqkv = nullptr;  // [q_dim + 2 kv_dim, H]
    bf16* wo = nullptr;    // [H, q_dim]
    bf16* gate = nullptr;  // [E, H]
    bf16* w13 = nullptr;   // [E, 2F, H]
    bf16* w2 = nullptr;    // [E, H, F]
    float* input_norm = nullptr;
    float* post_norm = nullptr;
    bf16* k_cache = nullptr;  // [num_blocks, block_size, kv_dim]
    bf16* v_cache = nullptr;
    int64_t* routed = nullptr;  // [E] (token, choice) pairs routed to each expert so far
  };
  struct Graph {
    int warmups = 0;
    bool disabled = false;  // capture failed once: this batch size runs eagerly
    cudaGraphExec_t exec = nullptr;
  };

  absl::Status CheckShapes() const;
  absl::Status UploadWeights();
  absl::Status AllocateBuffers();
  // Validates `plan` (ValidatePlan, the rule every executor applies) and stages its inputs.
  absl::Status Prepare(const StepPlan& plan);
  // Enqueues the forward pass of the prepared step on stream_. `static_shapes`: decode with
  // the padded expert path and no host synchronisation (capturable).
  absl::Status Enqueue(bool static_shapes);
  absl::Status EnqueueLayer(int l, bool static_shapes);
  absl::Status RunDecode();
  absl::Status Finish(const StepPlan& plan, StepResult* result);
  template <typename T>
  T* Meta(size_t offset) const {
    return reinterpret_cast<T*>(meta_dev_ + offset);
  }

  const ModelWeights& w_;
  const ModelConfig& cfg_;
  const KvPoolOptions kv_;
  const ForwardLimits limits_;
  const CudaExecutorOptions opts_;
  const int H_, F_, E_, K_, V_, D_, q_dim_, kv_dim_, qkv_dim_;
  int max_blocks_per_seq_ = 0;
  int static_batch_limit_ = 0;  // decode steps up to this batch use static shapes
  int moe_rows_ = 0;

  DeviceMemory mem_;
  int device_ = 0;  // the current device at Init; set again on whichever thread calls in
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cuda::GemmContext gemm_;
  bf16* embedding_ = nullptr;
  bf16* lm_head_ = nullptr;
  float* final_norm_ = nullptr;
  float* inv_freq_ = nullptr;
  std::vector<Layer> layers_;

  // Activations, sized for max_tokens rows.
  float* hidden_ = nullptr;     // residual stream, fp32
  bf16* normed_ = nullptr;      // [T, H]
  float* router_in_ = nullptr;  // [T, H] post-attention norm, unrounded
  float* qkv_ = nullptr;        // [T, q_dim + 2 kv_dim], fp32 until the bf16 cache write
  bf16* attn_ = nullptr;        // [T, q_dim]
  float* attn_out_ = nullptr;   // [T, H]
  float* moe_out_ = nullptr;    // [T, H]
  int32_t* topk_experts_ = nullptr;
  float* topk_weights_ = nullptr;
  cuda::ExpertFfnParams ffn_;  // grouped buffers (weights set per layer)
  int32_t* counts_ = nullptr;
  int32_t* offsets_ = nullptr;
  int32_t* row_token_ = nullptr;
  int32_t* pair_row_ = nullptr;
  cuda::BatchedExpertPointers ptrs_;
  bf16* head_normed_ = nullptr;  // [T, H]
  float* logits_ = nullptr;      // [T, V]
  int32_t* next_tokens_ = nullptr;

  // Step inputs: pinned host staging and its device copy, laid out by MetaLayout.
  uint8_t* meta_host_ = nullptr;
  uint8_t* meta_dev_ = nullptr;
  size_t meta_capacity_ = 0;
  int32_t* counts_host_ = nullptr;  // pinned
  int32_t* tokens_host_ = nullptr;  // pinned
  std::vector<float> logits_host_;

  // The prepared step.
  StepShape shape_;
  MetaLayout layout_;
  bool static_step_ = false;
  std::vector<int32_t> seq_head_row_;  // per plan sequence: first head row, -1 if none
  std::vector<int32_t> seq_request_;   // per plan sequence: sampling request, -1 if none

  std::map<int, Graph> graphs_;  // keyed by decode batch size
  CudaExecutorStats stats_;
  int64_t steps_ = 0;
  absl::Status broken_;  // the first failure after work was enqueued
};

CudaExecutor::CudaExecutor(const ModelWeights& weights, const KvPoolOptions& kv,
                           const ForwardLimits& limits, const CudaExecutorOptions& options)
    : w_(weights),
      cfg_(weights.config()),
      kv_(kv),
      limits_(limits),
      opts_(options),
      H_(cfg_.hidden_size),
      F_(cfg_.intermediate_size),
      E_(cfg_.num_local_experts),
      K_(cfg_.num_experts_per_tok),
      V_(cfg_.vocab_size),
      D_(cfg_.head_dim),
      q_dim_(cfg_.q_dim()),
      kv_dim_(cfg_.kv_dim()),
      qkv_dim_(cfg_.q_dim() + 2 * cfg_.kv_dim()) {}

CudaExecutor::~CudaExecutor() {
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [b, g] : graphs_) {
    if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
  }
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (meta_host_ != nullptr) cudaFreeHost(meta_host_);
  if (counts_host_ != nullptr) cudaFreeHost(counts_host_);
  if (tokens_host_ != nullptr) cudaFreeHost(tokens_host_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaExecutor::CheckShapes() const {
  const ShardSpec& spec = w_.spec();
  bool whole = spec.layer_begin == 0 && spec.layer_end == cfg_.num_hidden_layers &&
               spec.has_embedding && spec.has_head;
  for (int l = spec.layer_begin; whole && l < spec.layer_end; ++l) {
    for (int e = 0; e < E_; ++e) whole = whole && w_.layer(l).HasExpert(e);
  }
  if (!whole) {
    return absl::InvalidArgumentError(
        "the CUDA executor needs the whole model on one GPU (EP = PP = 1)");
  }
  if (D_ % 8 != 0 || D_ > cuda::kMaxHeadDim || E_ > cuda::kMaxExperts || K_ > cuda::kMaxTopK ||
      cfg_.num_attention_heads % cfg_.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("the CUDA kernels do not support head_dim ", D_,
                                                   " (need a multiple of 8, <= ", cuda::kMaxHeadDim,
                                                   "), ", E_, " experts (<= ", cuda::kMaxExperts,
                                                   ") or top-", K_, " (<= ", cuda::kMaxTopK, ")"));
  }
  if (limits_.max_tokens < 1 || limits_.max_context < 1 || kv_.block_size < 1 ||
      kv_.num_blocks < 1) {
    return absl::InvalidArgumentError("CUDA executor: limits and KV pool must be positive");
  }
  return absl::OkStatus();
}

absl::Status CudaExecutor::Init() {
  RETURN_IF_ERROR(CheckShapes());
  if (!cuda::DeviceAvailable()) return absl::UnavailableError("no CUDA device");
  RETURN_IF_ERROR(CudaCheck(cudaGetDevice(&device_), "cudaGetDevice"));
  max_blocks_per_seq_ = (limits_.max_context + kv_.block_size - 1) / kv_.block_size;
  static_batch_limit_ = std::min(opts_.max_graph_batch, limits_.max_tokens);
  const int slots = std::min(E_, static_batch_limit_ * K_);
  moe_rows_ = std::max(limits_.max_tokens * K_, slots * static_batch_limit_);

  RETURN_IF_ERROR(
      CudaCheck(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
  RETURN_IF_ERROR(cuda::CublasCheck(cublasCreate(&cublas_), "cublasCreate"));
  uint8_t* workspace = nullptr;
  RETURN_IF_ERROR(mem_.Alloc(kCublasWorkspaceBytes, &workspace));
  gemm_ = {cublas_, stream_};
  RETURN_IF_ERROR(cuda::BindCublas(gemm_, workspace, kCublasWorkspaceBytes));
  RETURN_IF_ERROR(UploadWeights());
  return AllocateBuffers();
}

absl::Status CudaExecutor::UploadWeights() {
  const size_t H = H_, F = F_, E = E_;
  RETURN_IF_ERROR(mem_.Alloc(static_cast<size_t>(V_) * H, &embedding_));
  RETURN_IF_ERROR(UploadMatrix(w_.embedding(), embedding_));
  if (w_.lm_head().data == w_.embedding().data) {
    lm_head_ = embedding_;  // tied embeddings
  } else {
    RETURN_IF_ERROR(mem_.Alloc(static_cast<size_t>(V_) * H, &lm_head_));
    RETURN_IF_ERROR(UploadMatrix(w_.lm_head(), lm_head_));
  }
  RETURN_IF_ERROR(mem_.Alloc(H, &final_norm_));
  RETURN_IF_ERROR(UploadFloats(w_.final_norm(), final_norm_));
  std::vector<float> inv_freq(D_ / 2);
  cpu::RopeInvFreq(D_, cfg_.rope_theta, inv_freq.data());
  RETURN_IF_ERROR(mem_.Alloc(inv_freq.size(), &inv_freq_));
  RETURN_IF_ERROR(UploadFloats(inv_freq, inv_freq_));

  const size_t cache_elems =
      static_cast<size_t>(kv_.num_blocks) * kv_.block_size * static_cast<size_t>(kv_dim_);
  layers_.resize(cfg_.num_hidden_layers);
  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    const LayerWeights& lw = w_.layer(l);
    Layer& d = layers_[l];
    RETURN_IF_ERROR(mem_.Alloc(static_cast<size_t>(qkv_dim_) * H, &d.wqkv));
    RETURN_IF_ERROR(UploadMatrix(lw.wq, d.wqkv));
    RETURN_IF_ERROR(UploadMatrix(lw.wk, d.wqkv + static_cast<size_t>(q_dim_) * H));
    RETURN_IF_ERROR(UploadMatrix(lw.wv, d.wqkv + static_cast<size_t>(q_dim_ + kv_dim_) * H));
    RETURN_IF_ERROR(mem_.Alloc(H * q_dim_, &d.wo));
    RETURN_IF_ERROR(UploadMatrix(lw.wo, d.wo));
    RETURN_IF_ERROR(mem_.Alloc(E * H, &d.gate));
    RETURN_IF_ERROR(UploadMatrix(lw.router, d.gate));
    RETURN_IF_ERROR(mem_.Alloc(E * 2 * F * H, &d.w13));
    RETURN_IF_ERROR(mem_.Alloc(E * H * F, &d.w2));
    for (size_t e = 0; e < E; ++e) {
      const ExpertWeights& ew = lw.experts[e];
      RETURN_IF_ERROR(UploadMatrix(ew.w1, d.w13 + e * 2 * F * H));
      RETURN_IF_ERROR(UploadMatrix(ew.w3, d.w13 + e * 2 * F * H + F * H));
      RETURN_IF_ERROR(UploadMatrix(ew.w2, d.w2 + e * H * F));
    }
    RETURN_IF_ERROR(mem_.Alloc(H, &d.input_norm));
    RETURN_IF_ERROR(UploadFloats(lw.input_norm, d.input_norm));
    RETURN_IF_ERROR(mem_.Alloc(H, &d.post_norm));
    RETURN_IF_ERROR(UploadFloats(lw.post_attention_norm, d.post_norm));
    RETURN_IF_ERROR(mem_.Alloc(cache_elems, &d.k_cache));
    RETURN_IF_ERROR(mem_.Alloc(cache_elems, &d.v_cache));
    RETURN_IF_ERROR(mem_.Alloc(E, &d.routed));
    RETURN_IF_ERROR(CudaCheck(cudaMemset(d.routed, 0, E * sizeof(int64_t)), "cudaMemset"));
  }
  return absl::OkStatus();
}

absl::Status CudaExecutor::AllocateBuffers() {
  const size_t T = limits_.max_tokens, H = H_, F = F_, rows = moe_rows_;
  RETURN_IF_ERROR(mem_.Alloc(T * H, &hidden_));
  RETURN_IF_ERROR(mem_.Alloc(T * H, &normed_));
  RETURN_IF_ERROR(mem_.Alloc(T * H, &router_in_));
  RETURN_IF_ERROR(mem_.Alloc(T * qkv_dim_, &qkv_));
  RETURN_IF_ERROR(mem_.Alloc(T * q_dim_, &attn_));
  RETURN_IF_ERROR(mem_.Alloc(T * H, &attn_out_));
  RETURN_IF_ERROR(mem_.Alloc(T * H, &moe_out_));
  RETURN_IF_ERROR(mem_.Alloc(T * K_, &topk_experts_));
  RETURN_IF_ERROR(mem_.Alloc(T * K_, &topk_weights_));
  ffn_.num_experts = E_;
  ffn_.hidden = H_;
  ffn_.ffn = F_;
  RETURN_IF_ERROR(mem_.Alloc(rows * H, &ffn_.rows));
  RETURN_IF_ERROR(mem_.Alloc(rows * 2 * F, &ffn_.h13));
  RETURN_IF_ERROR(mem_.Alloc(rows * F, &ffn_.act));
  RETURN_IF_ERROR(mem_.Alloc(rows * H, &ffn_.y));
  // Padding rows of the static path are computed (and ignored): start them at zero so they
  // never hold NaN bit patterns.
  RETURN_IF_ERROR(CudaCheck(cudaMemset(ffn_.rows, 0, rows * H * sizeof(bf16)), "cudaMemset"));
  RETURN_IF_ERROR(mem_.Alloc(E_, &counts_));
  RETURN_IF_ERROR(mem_.Alloc(E_ + 1, &offsets_));
  RETURN_IF_ERROR(mem_.Alloc(rows, &row_token_));
  RETURN_IF_ERROR(mem_.Alloc(T * K_, &pair_row_));
  const void** tables = nullptr;
  RETURN_IF_ERROR(mem_.Alloc(6 * static_cast<size_t>(E_), &tables));
  ptrs_ = {tables,          tables + E_,     const_cast<void**>(tables + 2 * E_),
           tables + 3 * E_, tables + 4 * E_, const_cast<void**>(tables + 5 * E_)};
  RETURN_IF_ERROR(mem_.Alloc(T * H, &head_normed_));
  RETURN_IF_ERROR(mem_.Alloc(T * V_, &logits_));
  RETURN_IF_ERROR(mem_.Alloc(T, &next_tokens_));

  const int t = limits_.max_tokens;
  meta_capacity_ =
      MetaLayout::For(
          {.T = t, .S = t, .stride = max_blocks_per_seq_, .R = t, .NT = t, .ND = t, .NR = t})
          .bytes;
  RETURN_IF_ERROR(mem_.Alloc(meta_capacity_, &meta_dev_));
  RETURN_IF_ERROR(CudaCheck(cudaMallocHost(reinterpret_cast<void**>(&meta_host_), meta_capacity_),
                            "cudaMallocHost"));
  RETURN_IF_ERROR(
      CudaCheck(cudaMallocHost(reinterpret_cast<void**>(&counts_host_), sizeof(int32_t) * E_),
                "cudaMallocHost"));
  RETURN_IF_ERROR(
      CudaCheck(cudaMallocHost(reinterpret_cast<void**>(&tokens_host_), sizeof(int32_t) * T),
                "cudaMallocHost"));
  return CudaCheck(cudaDeviceSynchronize(), "CUDA executor setup");
}

absl::Status CudaExecutor::Prepare(const StepPlan& plan) {
  RETURN_IF_ERROR(ValidatePlan(plan, {.vocab_size = V_,
                                      .dp_size = 1,
                                      .max_step_tokens = limits_.max_tokens,
                                      .max_context = limits_.max_context,
                                      .num_blocks = kv_.num_blocks,
                                      .block_size = kv_.block_size}));
  const int T = plan.total_tokens();
  const int bs = kv_.block_size;
  StepShape sh;
  sh.T = T;
  bool all_single = true;
  for (const SeqEntry& s : plan.seqs) {
    if (s.num_tokens == 0) continue;
    const int needed = (s.start_pos + s.num_tokens + bs - 1) / bs;
    ++sh.S;
    sh.stride = std::max(sh.stride, needed);
    all_single = all_single && s.num_tokens == 1;
    sh.R += HeadRows(s);
    sh.NR += s.sample ? 1 : 0;
    if (s.num_tokens == 1) {
      ++sh.ND;
    } else {
      sh.NT += (s.num_tokens + cuda::kPrefillTileRows - 1) / cuda::kPrefillTileRows;
    }
  }
  static_step_ = sh.S > 0 && all_single && sh.S <= static_batch_limit_;
  if (static_step_) {  // the layout must depend on the batch size alone
    sh.stride = max_blocks_per_seq_;
    sh.R = sh.NR = sh.ND = sh.S;
    sh.NT = 0;
  }
  shape_ = sh;
  layout_ = MetaLayout::For(sh);

  uint8_t* m = meta_host_;
  auto at = [m](size_t off) { return reinterpret_cast<int32_t*>(m + off); };
  if (T > 0) std::memcpy(at(layout_.tokens), plan.tokens.data(), sizeof(int32_t) * T);
  std::memset(at(layout_.tables), 0, sizeof(int32_t) * sh.S * static_cast<size_t>(sh.stride));
  auto* requests = reinterpret_cast<cuda::SampleRequest*>(m + layout_.requests);
  seq_head_row_.assign(plan.seqs.size(), -1);
  seq_request_.assign(plan.seqs.size(), -1);
  int j = 0, head = 0, tile = 0, dec = 0, req = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SeqEntry& s = plan.seqs[i];
    if (s.num_tokens == 0) continue;
    const int32_t* table = &plan.block_tables[s.block_offset];
    for (int r = 0; r < s.num_tokens; ++r) {
      const int pos = s.start_pos + r;
      at(layout_.positions)[s.token_offset + r] = pos;
      at(layout_.slots)[s.token_offset + r] = table[pos / bs] * bs + pos % bs;
    }
    at(layout_.seq_offset)[j] = s.token_offset;
    at(layout_.seq_start)[j] = s.start_pos;
    at(layout_.seq_ntok)[j] = s.num_tokens;
    const int needed = (s.start_pos + s.num_tokens + bs - 1) / bs;
    std::memcpy(at(layout_.tables) + static_cast<size_t>(j) * sh.stride, table,
                sizeof(int32_t) * needed);
    // Head rows (HeadRows); the static path gives every sequence its row.
    const int rows = std::max(HeadRows(s), static_step_ ? 1 : 0);
    if (rows > 0) {
      seq_head_row_[i] = head;
      for (int r = 0; r < rows; ++r) {
        at(layout_.head_rows)[head + r] = s.token_offset + s.num_tokens - rows + r;
      }
    }
    if (s.sample || static_step_) {
      cuda::SampleRequest q;  // a non-sampling sequence of a static step: greedy, ignored
      q.row = head + rows - 1;
      if (s.sample) {
        q.top_k = s.sampling.top_k;
        q.temperature = s.sampling.temperature;
        q.top_p = s.sampling.top_p;
        q.seed = s.sampling.seed;
        q.step = s.sample_index;
        seq_request_[i] = req;
      }
      requests[req++] = q;
    }
    head += rows;
    if (static_step_ || s.num_tokens == 1) {
      at(layout_.decode_seq)[dec++] = j;
    } else {
      for (int r = 0; r < s.num_tokens; r += cuda::kPrefillTileRows) {
        at(layout_.tile_seq)[tile] = j;
        at(layout_.tile_row0)[tile] = r;
        ++tile;
      }
    }
    ++j;
  }
  return absl::OkStatus();
}

absl::Status CudaExecutor::EnqueueLayer(int l, bool static_shapes) {
  const Layer& L = layers_[l];
  const int T = shape_.T;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  cudaStream_t st = stream_;
  // x += moe_out of the previous layer; normed = input_norm(x).
  RETURN_IF_ERROR(cuda::AddRmsNorm({.x = hidden_,
                                    .residual = l == 0 ? nullptr : moe_out_,
                                    .weight = L.input_norm,
                                    .num_rows = T,
                                    .hidden = H_,
                                    .eps = eps,
                                    .out = normed_},
                                   st));
  RETURN_IF_ERROR(cuda::Gemm(gemm_, {.x = normed_,
                                     .rows = T,
                                     .w = L.wqkv,
                                     .n = qkv_dim_,
                                     .k = H_,
                                     .y = qkv_,
                                     .out = cuda::GemmOut::kF32}));
  RETURN_IF_ERROR(cuda::Rope({.x = qkv_,
                              .row_stride = qkv_dim_,
                              .num_tokens = T,
                              .num_heads = cfg_.num_attention_heads + cfg_.num_key_value_heads,
                              .head_dim = D_,
                              .positions = Meta<int32_t>(layout_.positions),
                              .inv_freq = inv_freq_},
                             st));
  const cuda::PagedKv cache{L.k_cache, L.v_cache, kv_.block_size, kv_dim_};
  RETURN_IF_ERROR(cuda::KvWrite({.k = qkv_ + q_dim_,
                                 .v = qkv_ + q_dim_ + kv_dim_,
                                 .row_stride = qkv_dim_,
                                 .num_tokens = T,
                                 .slot_mapping = Meta<int32_t>(layout_.slots),
                                 .cache = cache},
                                st));
  const cuda::AttentionParams ap{
      .q = qkv_,
      .q_row_stride = qkv_dim_,
      .out = attn_,
      .out_row_stride = q_dim_,
      .heads = {cfg_.num_attention_heads, cfg_.num_key_value_heads, D_},
      .cache = cache,
      .seqs = {Meta<int32_t>(layout_.seq_offset), Meta<int32_t>(layout_.seq_start),
               Meta<int32_t>(layout_.seq_ntok), Meta<int32_t>(layout_.tables), shape_.stride}};
  if (shape_.NT > 0) {
    RETURN_IF_ERROR(cuda::PrefillAttention(
        ap, {Meta<int32_t>(layout_.tile_seq), Meta<int32_t>(layout_.tile_row0), shape_.NT}, st));
  }
  if (shape_.ND > 0) {
    RETURN_IF_ERROR(cuda::DecodeAttention(ap, {Meta<int32_t>(layout_.decode_seq), shape_.ND}, st));
  }
  RETURN_IF_ERROR(cuda::Gemm(gemm_, {.x = attn_,
                                     .rows = T,
                                     .w = L.wo,
                                     .n = H_,
                                     .k = q_dim_,
                                     .y = attn_out_,
                                     .out = cuda::GemmOut::kF32}));
  // x += attention; normed = post_attention_norm(x).
  RETURN_IF_ERROR(cuda::AddRmsNorm({.x = hidden_,
                                    .residual = attn_out_,
                                    .weight = L.post_norm,
                                    .num_rows = T,
                                    .hidden = H_,
                                    .eps = eps,
                                    .out = normed_,
                                    .out_f32 = router_in_},
                                   st));
  RETURN_IF_ERROR(cuda::Router({.x = router_in_,
                                .gate = L.gate,
                                .num_tokens = T,
                                .hidden = H_,
                                .num_experts = E_,
                                .top_k = K_,
                                .experts = topk_experts_,
                                .weights = topk_weights_},
                               st));
  cuda::ExpertFfnParams ffn = ffn_;
  ffn.w13 = L.w13;
  ffn.w2 = L.w2;
  cuda::MoePermuteParams mp{.x = normed_,
                            .experts = topk_experts_,
                            .num_tokens = T,
                            .top_k = K_,
                            .ffn = ffn,
                            .counts = counts_,
                            .offsets = offsets_,
                            .row_token = row_token_,
                            .pair_row = pair_row_,
                            .routed_totals = L.routed};
  if (static_shapes) {
    // Each expert gets at most T rows (a token's choices are distinct): T rows per slot.
    const int slots = std::min(E_, T * K_);
    mp.capacity = T;
    mp.num_slots = slots;
    mp.pointers = ptrs_;
    RETURN_IF_ERROR(cuda::MoePermute(mp, st));
    RETURN_IF_ERROR(cuda::ExpertFfnBatched(gemm_, ffn, ptrs_, slots, T));
  } else {
    RETURN_IF_ERROR(cuda::MoePermute(mp, st));
    RETURN_IF_ERROR(CudaCheck(
        cudaMemcpyAsync(counts_host_, counts_, sizeof(int32_t) * E_, cudaMemcpyDeviceToHost, st),
        "copy expert counts"));
    RETURN_IF_ERROR(CudaCheck(cudaStreamSynchronize(st), "expert counts"));
    RETURN_IF_ERROR(cuda::ExpertFfnPacked(gemm_, ffn, counts_host_));
  }
  return cuda::MoeUnpermute({.y = ffn.y,
                             .pair_row = pair_row_,
                             .weights = topk_weights_,
                             .num_tokens = T,
                             .top_k = K_,
                             .hidden = H_,
                             .out = moe_out_},
                            st);
}

absl::Status CudaExecutor::Enqueue(bool static_shapes) {
  RETURN_IF_ERROR(cuda::Embedding({.table = embedding_,
                                   .ids = Meta<int32_t>(layout_.tokens),
                                   .num_tokens = shape_.T,
                                   .hidden = H_,
                                   .out = hidden_},
                                  stream_));
  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    RETURN_IF_ERROR(EnqueueLayer(l, static_shapes));
  }
  if (shape_.R == 0) return absl::OkStatus();
  // Head rows only: x += moe_out of the last layer; final norm; lm_head; sampling.
  RETURN_IF_ERROR(cuda::AddRmsNorm({.x = hidden_,
                                    .residual = moe_out_,
                                    .weight = final_norm_,
                                    .rows = Meta<int32_t>(layout_.head_rows),
                                    .num_rows = shape_.R,
                                    .hidden = H_,
                                    .eps = static_cast<float>(cfg_.rms_norm_eps),
                                    .out = head_normed_},
                                   stream_));
  RETURN_IF_ERROR(cuda::Gemm(gemm_, {.x = head_normed_,
                                     .rows = shape_.R,
                                     .w = lm_head_,
                                     .n = V_,
                                     .k = H_,
                                     .y = logits_,
                                     .out = cuda::GemmOut::kF32}));
  return cuda::Sample({.logits = logits_,
                       .vocab = V_,
                       .requests = Meta<cuda::SampleRequest>(layout_.requests),
                       .num_requests = shape_.NR,
                       .tokens = next_tokens_},
                      stream_);
}

absl::Status CudaExecutor::RunDecode() {
  const int batch = shape_.S;
  Graph& g = graphs_[batch];
  if (!opts_.use_graphs || g.disabled || (g.exec == nullptr && g.warmups < 1)) {
    ++g.warmups;
    ++stats_.eager_steps;
    return Enqueue(/*static_shapes=*/true);
  }
  if (g.exec == nullptr) {
    cudaGraph_t graph = nullptr;
    RETURN_IF_ERROR(CudaCheck(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                              "cudaStreamBeginCapture"));
    const absl::Status enqueued = Enqueue(/*static_shapes=*/true);
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    cudaError_t inst = cudaErrorUnknown;
    if (enqueued.ok() && ended == cudaSuccess) {
      inst = cudaGraphInstantiate(&g.exec, graph, 0);
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      // Capture failed (nothing ran): run this batch size eagerly from now on.
      cudaGetLastError();
      g.exec = nullptr;
      g.disabled = true;
      ++stats_.graph_failures;
      ++stats_.eager_steps;
      return Enqueue(/*static_shapes=*/true);
    }
    ++stats_.graph_captures;
  }
  ++stats_.graph_launches;
  return CudaCheck(cudaGraphLaunch(g.exec, stream_), "cudaGraphLaunch");
}

absl::Status CudaExecutor::Finish(const StepPlan& plan, StepResult* result) {
  if (shape_.NR > 0) {
    RETURN_IF_ERROR(
        CudaCheck(cudaMemcpyAsync(tokens_host_, next_tokens_, sizeof(int32_t) * shape_.NR,
                                  cudaMemcpyDeviceToHost, stream_),
                  "copy next tokens"));
  }
  bool want_logits = false;
  for (const SeqEntry& s : plan.seqs) {
    want_logits |= s.num_tokens > 0 && s.logits != LogitsMode::kNone;
  }
  if (want_logits) {
    logits_host_.resize(static_cast<size_t>(shape_.R) * V_);
    RETURN_IF_ERROR(
        CudaCheck(cudaMemcpyAsync(logits_host_.data(), logits_, sizeof(float) * logits_host_.size(),
                                  cudaMemcpyDeviceToHost, stream_),
                  "copy logits"));
  }
  RETURN_IF_ERROR(CudaCheck(cudaStreamSynchronize(stream_), "CUDA step"));

  const size_t n = plan.seqs.size();
  result->next_tokens.assign(n, -1);
  result->logits_offset.assign(n, 0);
  result->logits_rows.assign(n, 0);
  result->logits.clear();
  int32_t out_rows = 0;
  for (size_t i = 0; i < n; ++i) {
    const SeqEntry& s = plan.seqs[i];
    if (s.num_tokens == 0) continue;
    if (seq_request_[i] >= 0) result->next_tokens[i] = tokens_host_[seq_request_[i]];
    const int keep = ReturnedLogitRows(s);
    if (keep == 0) continue;
    // The last `keep` of the sequence's head rows.
    const int head_rows = std::max(HeadRows(s), static_step_ ? 1 : 0);
    const size_t first = static_cast<size_t>(seq_head_row_[i] + head_rows - keep) * V_;
    result->logits_offset[i] = out_rows;
    result->logits_rows[i] = keep;
    result->logits.insert(result->logits.end(), logits_host_.begin() + first,
                          logits_host_.begin() + first + static_cast<size_t>(keep) * V_);
    out_rows += keep;
  }
  return absl::OkStatus();
}

absl::Status CudaExecutor::Execute(const StepPlan& plan, StepResult* result) {
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA executor failed earlier: ", broken_.message()));
  }
  // The current device is per thread: the scheduler calls from its own thread.
  RETURN_IF_ERROR(CudaCheck(cudaSetDevice(device_), "cudaSetDevice"));
  RETURN_IF_ERROR(Prepare(plan));  // invalid plans leave the executor usable
  for (const SeqEntry& s : plan.seqs) {
    if (s.routing != RoutingMode::kNone) {
      return absl::UnimplementedError(absl::StrCat(
          "sequence ", s.seq_id, ": routing (return_routing, switchyard trace) is not "
          "recorded by the CUDA executor yet; run on --device cpu"));
    }
  }
  absl::Status st = CudaCheck(
      cudaMemcpyAsync(meta_dev_, meta_host_, layout_.bytes, cudaMemcpyHostToDevice, stream_),
      "copy step inputs");
  if (st.ok() && shape_.T > 0) {
    if (static_step_) {
      st = RunDecode();
    } else {
      ++stats_.eager_steps;
      st = Enqueue(/*static_shapes=*/false);
    }
  }
  if (st.ok()) st = Finish(plan, result);
  if (st.ok()) result->SizeRouting(plan, 0);  // no seq asks for routing: all empty
  if (!st.ok()) broken_ = st;  // device state (KV cache) is unknown now
  steps_ += st.ok() ? 1 : 0;
  return st;
}

absl::StatusOr<std::vector<RankStatus>> CudaExecutor::CollectStatus() {
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA executor failed earlier: ", broken_.message()));
  }
  const ShardSpec& spec = w_.spec();
  RankStatus r;
  r.layer_begin = spec.layer_begin;
  r.layer_end = spec.layer_end;
  r.experts = spec.local_experts;
  r.has_embedding = spec.has_embedding;
  r.has_head = spec.has_head;
  r.weight_bytes = w_.resident_bytes();
  const uint64_t kv_bytes = KvBytesPerToken(cfg_.num_hidden_layers, kv_dim_, kCudaKvDType) *
                            kv_.num_blocks * kv_.block_size;
  r.kv_bytes = kv_bytes;
  r.steps = steps_;
  r.expert_tokens.assign(layers_.size(), std::vector<int64_t>(E_));
  RETURN_IF_ERROR(CudaCheck(cudaSetDevice(device_), "cudaSetDevice"));
  RETURN_IF_ERROR(CudaCheck(cudaStreamSynchronize(stream_), "CollectStatus"));
  for (size_t l = 0; l < layers_.size(); ++l) {
    RETURN_IF_ERROR(CudaCheck(cudaMemcpy(r.expert_tokens[l].data(), layers_[l].routed,
                                         sizeof(int64_t) * E_, cudaMemcpyDeviceToHost),
                              "copy routed-token counts"));
  }
  return std::vector<RankStatus>{r};
}

}  // namespace

bool CudaDeviceAvailable() { return cuda::DeviceAvailable(); }

absl::StatusOr<std::unique_ptr<CudaStepExecutor>> MakeCudaExecutor(
    const ModelWeights& weights, const KvPoolOptions& kv, const ForwardLimits& limits,
    const CudaExecutorOptions& options) {
  auto exec = std::make_unique<CudaExecutor>(weights, kv, limits, options);
  RETURN_IF_ERROR(exec->Init());
  return std::unique_ptr<CudaStepExecutor>(std::move(exec));
}

absl::StatusOr<std::unique_ptr<StepExecutor>> MakeCudaExecutor(const ModelWeights& weights,
                                                               const KvPoolOptions& kv,
                                                               const ForwardLimits& limits) {
  ASSIGN_OR_RETURN(auto exec, MakeCudaExecutor(weights, kv, limits, CudaExecutorOptions{}));
  return std::unique_ptr<StepExecutor>(std::move(exec));
}

}  // namespace switchyard
