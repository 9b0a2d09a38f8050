// CudaStageBackend: see worker/cuda_stage_backend.h for the contract. The plan rules are
// worker/step.h's (checked once by the DistributedExecutor); the dispatch indices are
// worker/device_dispatch.h's; this file enqueues device work and waits for it.
#include "worker/cuda_stage_backend.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/cuda_device.h"
#include "comm/metered_communicator.h"
#include "common/bf16.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "worker/device_dispatch.h"
#include "worker/kv_cache.h"
#include "worker/step_head.h"

namespace switchyard {
namespace {

using cuda::bf16;
using cuda::CudaCheck;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper
constexpr size_t kConvertChunk = size_t{1} << 22;           // elements per host conversion
constexpr size_t kMaxGraphs = 256;  // decode graphs kept; shapes beyond run eagerly
// The KV cache holds bf16 K and V: the element type ModelSession sizes the pool for.
static_assert(KvElementBytes(kCudaKvDType) == sizeof(bf16));

// Allocations owned together: device memory (cudaMalloc, 256-byte aligned) or pinned host
// memory (cudaMallocHost), freed with the owner.
class Allocations {
 public:
  explicit Allocations(bool pinned_host) : pinned_host_(pinned_host) {}
  Allocations(const Allocations&) = delete;
  Allocations& operator=(const Allocations&) = delete;
  ~Allocations() {
    for (void* p : ptrs_) pinned_host_ ? cudaFreeHost(p) : cudaFree(p);
  }
  template <typename T>
  absl::Status Alloc(size_t n, T** out) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(n, 1) * sizeof(T);
    const cudaError_t err = pinned_host_ ? cudaMallocHost(&p, bytes) : cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat(pinned_host_ ? "cudaMallocHost(" : "cudaMalloc(", bytes, " bytes) with ",
                       bytes_, " bytes held: ", cudaGetErrorString(err)));
    }
    ptrs_.push_back(p);
    bytes_ += bytes;
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }
  uint64_t bytes() const { return bytes_; }

 private:
  const bool pinned_host_;
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

// The sizes of one micro-batch as the layers see them (sequences with no tokens left out).
struct LayerShape {
  int T = 0;       // token rows
  int S = 0;       // sequences
  int stride = 0;  // block table entries per sequence
  int NT = 0;      // prefill tiles
  int ND = 0;      // decode sequences
};

// Byte offsets of a micro-batch's inputs inside the layer metadata buffer (host staging and
// device copy share it). A pure function of the shape: a decode micro-batch of B sequences
// always has the same one, which is what lets a captured graph read a buffer refreshed
// before every launch.
struct MetaLayout {
  size_t positions = 0, slots = 0;
  size_t seq_offset = 0, seq_start = 0, seq_ntok = 0, tables = 0;
  size_t tile_seq = 0, tile_row0 = 0, decode_seq = 0;
  size_t bytes = 0;

  static MetaLayout For(const LayerShape& s) {
    MetaLayout m;
    size_t off = 0;
    auto take = [&off](size_t bytes) {
      off = (off + 15) / 16 * 16;
      const size_t at = off;
      off += bytes;
      return at;
    };
    const size_t i32 = sizeof(int32_t);
    m.positions = take(i32 * s.T);
    m.slots = take(i32 * s.T);
    m.seq_offset = take(i32 * s.S);
    m.seq_start = take(i32 * s.S);
    m.seq_ntok = take(i32 * s.S);
    m.tables = take(i32 * s.S * static_cast<size_t>(s.stride));
    m.tile_seq = take(i32 * s.NT);
    m.tile_row0 = take(i32 * s.NT);
    m.decode_seq = take(i32 * s.ND);
    m.bytes = (off + 15) / 16 * 16;
    return m;
  }
};

// The byte blocks of one all-to-all-v, in rank order and back to back: block r holds
// rows[r] rows of row_bytes.
struct Blocks {
  std::vector<size_t> bytes, offsets;
  void Set(std::span<const size_t> rows, size_t row_bytes) {
    bytes.resize(rows.size());
    offsets.resize(rows.size());
    size_t at = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      bytes[r] = rows[r] * row_bytes;
      offsets[r] = at;
      at += bytes[r];
    }
  }
};

// Where each kind of dispatch index sits in the index buffer (host staging and device copy
// share it), at fixed offsets.
struct IndexLayout {
  size_t send_token = 0, group_row = 0, pair_group = 0, pair_weight = 0, combine_rows = 0;
  size_t words = 0;
};

class CudaBackend final : public CudaStageBackend {
 public:
  CudaBackend(const ModelWeights& weights, Communicator* ep_control, Communicator* ep_device,
              ExpertRanks routing, const KvPoolOptions& kv, const ForwardLimits& limits,
              const CudaBackendOptions& options, cudaStream_t stream);
  ~CudaBackend() override;
  absl::Status Init();

  absl::Status Embed(const int32_t* tokens, int rows, int row0) override;
  absl::Status RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables, int row0,
                         const RoutingCapture* capture) override;
  absl::Status Head(const StepPlan& local, StepResult* result) override;
  void* hidden_rows(int row0) override { return hidden_ + static_cast<size_t>(row0) * H_; }
  size_t row_bytes() const override { return static_cast<size_t>(H_) * sizeof(float); }
  const ForwardLimits& limits() const override { return limits_; }
  uint64_t kv_bytes() const override {
    return KvBytesPerToken(num_layers_, kv_dim_, kCudaKvDType) *
           static_cast<uint64_t>(kv_.num_blocks) * static_cast<uint64_t>(kv_.block_size);
  }
  const std::vector<std::vector<int64_t>>& expert_token_counts() const override;
  const CommMeter& dispatch_meter() const override { return ep_metered_.meter(); }
  bool records_routing() const override { return false; }
  const CudaExecutorStats& stats() const override { return stats_; }
  uint64_t device_bytes() const override { return mem_.bytes(); }

 private:
  struct Layer {
    bf16* wqkv = nullptr;  // [q_dim + 2 kv_dim, H]
    bf16* wo = nullptr;    // [H, q_dim]
    bf16* gate = nullptr;  // [E, H]
    bf16* w13 = nullptr;   // [local experts, 2F, H]
    bf16* w2 = nullptr;    // [local experts, H, F]
    int num_local = 0;     // experts held (local slots)
    float* input_norm = nullptr;
    float* post_norm = nullptr;
    bf16* k_cache = nullptr;  // [num_blocks, block_size, kv_dim]
    bf16* v_cache = nullptr;
    int64_t* routed = nullptr;  // [E] (token, choice) pairs routed to each expert (one EP rank)
  };
  struct Graph {
    int warmups = 0;
    bool disabled = false;  // capture failed once: this shape runs eagerly
    cudaGraphExec_t exec = nullptr;
  };

  absl::Status CheckShapes() const;
  absl::Status UploadWeights();
  absl::Status AllocateBuffers();
  // Fails with the first error once device work may have been lost.
  absl::Status Usable() const;
  absl::Status Broken(absl::Status st) {
    if (!st.ok() && broken_.ok()) broken_ = st;
    return st;
  }
  // Waits for the stream (or an event) against the deadline.
  absl::Status Drain(const char* what);
  absl::Status WaitEvent(cudaEvent_t event, const char* what);
  // Stages the micro-batch's inputs (positions, slots, sequences, tables, tiles).
  absl::Status Prepare(std::span<const SeqEntry> seqs, const int32_t* block_tables);
  absl::Status EnqueueLayers(float* x, bool static_shapes);
  absl::Status EnqueueLayer(int l, float* x, bool static_shapes);
  // The MoE of layer l over the T rows of normed_/router_in_ into moe_out_.
  absl::Status LocalMoe(int l, bool static_shapes);
  absl::Status DispatchedMoe(int l);
  // Decode micro-batches (static shapes): graphs where the work allows.
  absl::Status RunDecode(float* x, int row0);
  // Runs `enqueue` eagerly the first time a key is seen, captures it as a CUDA graph the
  // second time, replays the graph after that (eagerly again if capture failed).
  using GraphKey = std::tuple<int, int, int>;  // (layer or -1 for the stage, batch, first row)
  absl::Status RunCaptured(const GraphKey& key, const std::function<absl::Status()>& enqueue);
  // A layer's attention block and router (T > 0 rows).
  absl::Status EnqueueAttention(int l, float* x);
  template <typename T>
  T* Meta(size_t offset) const {
    return reinterpret_cast<T*>(meta_dev_ + offset);
  }

  const ModelWeights& w_;
  const ModelConfig& cfg_;
  Communicator* ep_control_;
  Communicator* ep_device_;
  MeteredCommunicator ep_metered_;  // ep_device_, counted
  const KvPoolOptions kv_;
  const ForwardLimits limits_;
  const CudaBackendOptions opts_;
  cudaStream_t stream_;
  const int H_, F_, E_, K_, V_, D_, q_dim_, kv_dim_, qkv_dim_;
  const int layer_begin_, layer_end_, num_layers_;
  const int ep_;
  int max_blocks_per_seq_ = 0;
  int static_batch_limit_ = 0;  // decode micro-batches up to this batch use static shapes
  int64_t ffn_rows_ = 0;        // rows of the grouped expert buffers
  int64_t max_pairs_ = 0;       // (row, expert) pairs one EP layer may group here

  Allocations mem_{/*pinned_host=*/false};
  Allocations pinned_{/*pinned_host=*/true};
  int device_ = 0;  // the current device at Init; set again on whichever thread calls in
  cublasHandle_t cublas_ = nullptr;
  cuda::GemmContext gemm_;
  bf16* embedding_ = nullptr;
  bf16* lm_head_ = nullptr;
  float* final_norm_ = nullptr;
  float* inv_freq_ = nullptr;
  std::vector<Layer> layers_;  // the stage's layers, from layer_begin_

  // Activations, sized for max_tokens rows.
  float* hidden_ = nullptr;     // residual stream of the whole local plan, fp32
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

  // Expert parallelism (ep_ > 1).
  std::unique_ptr<DeviceDispatchPlan> plan_;
  bf16* send_rows_ = nullptr;       // [max_send_rows, H]
  bf16* recv_rows_ = nullptr;       // [max_recv_rows, H]
  float* partial_ = nullptr;        // [max_recv_rows, H]
  float* returned_ = nullptr;       // [max_send_rows, H]
  float* ones_ = nullptr;           // [max_tokens * combine width]
  int32_t* index_dev_ = nullptr;    // IndexLayout
  int32_t* index_host_ = nullptr;   // pinned, IndexLayout
  IndexLayout index_;
  int32_t* topk_experts_host_ = nullptr;  // pinned [max_tokens, K]
  float* topk_weights_host_ = nullptr;
  std::vector<int64_t> counts_out_, counts_in_;
  std::vector<size_t> recv_rows_of_;
  // The three exchanges of a layer: pairs (host), rows and partial sums (device), each way.
  Blocks meta_out_, meta_in_, rows_out_, rows_in_, sums_out_, sums_in_;
  std::vector<int32_t> recv_meta_;

  // Inputs: pinned host staging and device copies.
  uint8_t* meta_host_ = nullptr;
  uint8_t* meta_dev_ = nullptr;
  size_t meta_capacity_ = 0;
  cudaEvent_t meta_copied_ = nullptr;  // the last copy out of meta_host_
  int32_t* ids_host_ = nullptr;        // [max_tokens] embedding ids
  int32_t* ids_dev_ = nullptr;
  cudaEvent_t ids_copied_ = nullptr;
  cudaEvent_t index_copied_ = nullptr;  // the last copy out of index_host_
  int32_t* head_host_ = nullptr;  // head rows, then sampling requests
  int32_t* head_dev_ = nullptr;
  size_t head_requests_at_ = 0;  // words
  int32_t* tokens_host_ = nullptr;  // pinned [max_tokens]
  int32_t* counts_host_ = nullptr;  // pinned [E]
  float* logits_host_ = nullptr;  // pinned [max_tokens, V]
  std::vector<int32_t> head_rows_;
  std::vector<int32_t> seq_request_;  // per plan sequence: sampling request, -1 if none

  // The prepared micro-batch.
  LayerShape shape_;
  MetaLayout layout_;

  std::map<GraphKey, Graph> graphs_;
  CudaExecutorStats stats_;
  mutable std::vector<std::vector<int64_t>> expert_counts_;
  absl::Status broken_;
};

CudaBackend::CudaBackend(const ModelWeights& weights, Communicator* ep_control,
                         Communicator* ep_device, ExpertRanks routing, const KvPoolOptions& kv,
                         const ForwardLimits& limits, const CudaBackendOptions& options,
                         cudaStream_t stream)
    : w_(weights),
      cfg_(weights.config()),
      ep_control_(ep_control),
      ep_device_(ep_device),
      ep_metered_(ep_device),
      kv_(kv),
      limits_(limits),
      opts_(options),
      stream_(stream),
      H_(cfg_.hidden_size),
      F_(cfg_.intermediate_size),
      E_(cfg_.num_local_experts),
      K_(cfg_.num_experts_per_tok),
      V_(cfg_.vocab_size),
      D_(cfg_.head_dim),
      q_dim_(cfg_.q_dim()),
      kv_dim_(cfg_.kv_dim()),
      qkv_dim_(cfg_.q_dim() + 2 * cfg_.kv_dim()),
      layer_begin_(weights.spec().layer_begin),
      layer_end_(weights.spec().layer_end),
      num_layers_(weights.spec().layer_end - weights.spec().layer_begin),
      ep_(ep_control->size()) {
  const DispatchLayout layout{.hidden = H_,
                              .top_k = K_,
                              .num_experts = E_,
                              .ep = ep_,
                              .max_tokens = limits.max_tokens};
  plan_ = std::make_unique<DeviceDispatchPlan>(layout, std::move(routing), ep_control->rank());
  expert_counts_.assign(cfg_.num_hidden_layers, std::vector<int64_t>(E_, 0));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  // Work still queued may read these buffers; a GPU that failed or hung is not waited for.
  if (stream_ != nullptr && broken_.ok()) {
    (void)PollCuda(stream_, nullptr, opts_.deadline, "CUDA backend shutdown");
  }
  for (auto& [key, g] : graphs_) {
    if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
  }
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (meta_copied_ != nullptr) cudaEventDestroy(meta_copied_);
  if (ids_copied_ != nullptr) cudaEventDestroy(ids_copied_);
  if (index_copied_ != nullptr) cudaEventDestroy(index_copied_);
}

absl::Status CudaBackend::CheckShapes() const {
  if (ep_device_->size() != ep_ || ep_device_->rank() != ep_control_->rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the EP group's device communicator (", ep_device_->name(), ", rank ", ep_device_->rank(),
        " of ", ep_device_->size(), ") does not match its host one (", ep_control_->name(),
        ", rank ", ep_control_->rank(), " of ", ep_, ")"));
  }
  RETURN_IF_ERROR(plan_->Validate());
  for (int l = layer_begin_; l < layer_end_; ++l) {
    for (int e = 0; e < E_; ++e) {
      const bool routed_here = plan_->slot_of(l, e) >= 0;
      if (routed_here != w_.layer(l).HasExpert(e)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", l, " expert ", e, ": the placement ", routed_here ? "gives" : "does not give",
            " it to this rank, but its weights are ", w_.layer(l).HasExpert(e) ? "" : "not ",
            "loaded here"));
      }
    }
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
    return absl::InvalidArgumentError("CUDA backend: limits and KV pool must be positive");
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Init() {
  RETURN_IF_ERROR(CheckShapes());
  if (!cuda::DeviceAvailable()) return absl::UnavailableError("no CUDA device");
  RETURN_IF_ERROR(CudaCheck(cudaGetDevice(&device_), "cudaGetDevice"));
  max_blocks_per_seq_ = (limits_.max_context + kv_.block_size - 1) / kv_.block_size;
  // A received row carries at most min(top_k, experts held) pairs for this rank.
  int most_local = 0;
  for (int l = layer_begin_; l < layer_end_; ++l) {
    most_local = std::max(most_local, static_cast<int>(plan_->local_experts(l).size()));
  }
  max_pairs_ = static_cast<int64_t>(plan_->layout().max_recv_rows()) * std::min(K_, most_local);
  static_batch_limit_ = std::min(opts_.max_graph_batch, limits_.max_tokens);
  // Grouped expert rows: the local path's (padded decode slots included), and with EP > 1
  // every pair this rank may receive.
  const int64_t slots = ep_ == 1 ? std::min(E_, static_batch_limit_ * K_) : 0;
  ffn_rows_ = std::max<int64_t>(static_cast<int64_t>(limits_.max_tokens) * K_,
                                slots * static_batch_limit_);
  if (ep_ > 1) ffn_rows_ = std::max(ffn_rows_, max_pairs_);

  RETURN_IF_ERROR(cuda::CublasCheck(cublasCreate(&cublas_), "cublasCreate"));
  uint8_t* workspace = nullptr;
  RETURN_IF_ERROR(mem_.Alloc(kCublasWorkspaceBytes, &workspace));
  gemm_ = {cublas_, stream_};
  RETURN_IF_ERROR(cuda::BindCublas(gemm_, workspace, kCublasWorkspaceBytes));
  RETURN_IF_ERROR(CudaCheck(cudaEventCreateWithFlags(&meta_copied_, cudaEventDisableTiming),
                            "cudaEventCreate"));
  RETURN_IF_ERROR(CudaCheck(cudaEventCreateWithFlags(&ids_copied_, cudaEventDisableTiming),
                            "cudaEventCreate"));
  RETURN_IF_ERROR(CudaCheck(cudaEventCreateWithFlags(&index_copied_, cudaEventDisableTiming),
                            "cudaEventCreate"));
  RETURN_IF_ERROR(UploadWeights());
  return AllocateBuffers();
}

absl::Status CudaBackend::UploadWeights() {
  const size_t H = H_, F = F_, E = E_;
  const ShardSpec& spec = w_.spec();
  if (spec.has_embedding) {
    RETURN_IF_ERROR(mem_.Alloc(static_cast<size_t>(V_) * H, &embedding_));
    RETURN_IF_ERROR(UploadMatrix(w_.embedding(), embedding_));
  }
  if (spec.has_head) {
    if (embedding_ != nullptr && w_.lm_head().data == w_.embedding().data) {
      lm_head_ = embedding_;  // tied embeddings
    } else {
      RETURN_IF_ERROR(mem_.Alloc(static_cast<size_t>(V_) * H, &lm_head_));
      RETURN_IF_ERROR(UploadMatrix(w_.lm_head(), lm_head_));
    }
    RETURN_IF_ERROR(mem_.Alloc(H, &final_norm_));
    RETURN_IF_ERROR(UploadFloats(w_.final_norm(), final_norm_));
  }
  std::vector<float> inv_freq(D_ / 2);
  cpu::RopeInvFreq(D_, cfg_.rope_theta, inv_freq.data());
  RETURN_IF_ERROR(mem_.Alloc(inv_freq.size(), &inv_freq_));
  RETURN_IF_ERROR(UploadFloats(inv_freq, inv_freq_));

  const size_t cache_elems =
      static_cast<size_t>(kv_.num_blocks) * kv_.block_size * static_cast<size_t>(kv_dim_);
  layers_.resize(num_layers_);
  for (int l = layer_begin_; l < layer_end_; ++l) {
    const LayerWeights& lw = w_.layer(l);
    Layer& d = layers_[l - layer_begin_];
    RETURN_IF_ERROR(mem_.Alloc(static_cast<size_t>(qkv_dim_) * H, &d.wqkv));
    RETURN_IF_ERROR(UploadMatrix(lw.wq, d.wqkv));
    RETURN_IF_ERROR(UploadMatrix(lw.wk, d.wqkv + static_cast<size_t>(q_dim_) * H));
    RETURN_IF_ERROR(UploadMatrix(lw.wv, d.wqkv + static_cast<size_t>(q_dim_ + kv_dim_) * H));
    RETURN_IF_ERROR(mem_.Alloc(H * q_dim_, &d.wo));
    RETURN_IF_ERROR(UploadMatrix(lw.wo, d.wo));
    RETURN_IF_ERROR(mem_.Alloc(E * H, &d.gate));
    RETURN_IF_ERROR(UploadMatrix(lw.router, d.gate));
    const std::vector<int>& local = plan_->local_experts(l);
    d.num_local = static_cast<int>(local.size());
    const size_t n = local.size();
    RETURN_IF_ERROR(mem_.Alloc(n * 2 * F * H, &d.w13));
    RETURN_IF_ERROR(mem_.Alloc(n * H * F, &d.w2));
    for (size_t s = 0; s < n; ++s) {
      const ExpertWeights& ew = lw.experts[local[s]];
      RETURN_IF_ERROR(UploadMatrix(ew.w1, d.w13 + s * 2 * F * H));
      RETURN_IF_ERROR(UploadMatrix(ew.w3, d.w13 + s * 2 * F * H + F * H));
      RETURN_IF_ERROR(UploadMatrix(ew.w2, d.w2 + s * H * F));
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

absl::Status CudaBackend::AllocateBuffers() {
  const size_t T = limits_.max_tokens, H = H_, F = F_, rows = ffn_rows_;
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
  if (w_.spec().has_head) {
    RETURN_IF_ERROR(mem_.Alloc(T * H, &head_normed_));
    RETURN_IF_ERROR(mem_.Alloc(T * V_, &logits_));
    RETURN_IF_ERROR(mem_.Alloc(T, &next_tokens_));
    // Pinned, so the copy back is asynchronous and its wait keeps the deadline.
    RETURN_IF_ERROR(pinned_.Alloc(T * V_, &logits_host_));
  }
  // Head rows, then the sampling requests from a 16-byte boundary.
  head_requests_at_ = (T + 3) / 4 * 4;
  const size_t head_words = head_requests_at_ + T * sizeof(cuda::SampleRequest) / sizeof(int32_t);
  RETURN_IF_ERROR(mem_.Alloc(head_words, &head_dev_));
  RETURN_IF_ERROR(pinned_.Alloc(head_words, &head_host_));
  RETURN_IF_ERROR(mem_.Alloc(T, &ids_dev_));
  RETURN_IF_ERROR(pinned_.Alloc(T, &ids_host_));

  const int t = limits_.max_tokens;
  meta_capacity_ =
      MetaLayout::For({.T = t, .S = t, .stride = max_blocks_per_seq_, .NT = t, .ND = t}).bytes;
  RETURN_IF_ERROR(mem_.Alloc(meta_capacity_, &meta_dev_));
  RETURN_IF_ERROR(pinned_.Alloc(meta_capacity_, &meta_host_));
  RETURN_IF_ERROR(pinned_.Alloc(E_, &counts_host_));
  RETURN_IF_ERROR(pinned_.Alloc(T, &tokens_host_));

  if (ep_ > 1) {
    const DispatchLayout& dl = plan_->layout();
    const size_t S = dl.max_send_rows(), R = dl.max_recv_rows();
    const size_t C = plan_->combine_width();
    RETURN_IF_ERROR(mem_.Alloc(S * H, &send_rows_));
    RETURN_IF_ERROR(mem_.Alloc(R * H, &recv_rows_));
    RETURN_IF_ERROR(mem_.Alloc(R * H, &partial_));
    RETURN_IF_ERROR(mem_.Alloc(S * H, &returned_));
    RETURN_IF_ERROR(mem_.Alloc(T * C, &ones_));
    const std::vector<float> ones(T * C, 1.0f);
    RETURN_IF_ERROR(UploadFloats(ones, ones_));
    // Index sections at fixed offsets, 16-byte aligned (four words).
    size_t off = 0;
    auto take = [&off](size_t words) {
      const size_t at = off;
      off += (words + 3) / 4 * 4;
      return at;
    };
    index_.send_token = take(S);
    index_.group_row = take(max_pairs_);
    index_.pair_group = take(R * K_);
    index_.pair_weight = take(R * K_);
    index_.combine_rows = take(T * C);
    index_.words = off;
    RETURN_IF_ERROR(mem_.Alloc(index_.words, &index_dev_));
    RETURN_IF_ERROR(pinned_.Alloc(index_.words, &index_host_));
    RETURN_IF_ERROR(pinned_.Alloc(T * K_, &topk_experts_host_));
    RETURN_IF_ERROR(pinned_.Alloc(T * K_, &topk_weights_host_));
    recv_rows_of_.assign(ep_, 0);
    counts_out_.assign(ep_, 0);
    counts_in_.assign(ep_, 0);
  }
  return CudaCheck(cudaDeviceSynchronize(), "CUDA backend setup");
}

absl::Status CudaBackend::Usable() const {
  if (broken_.ok()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the CUDA backend failed earlier: ", broken_.message()));
}

absl::Status CudaBackend::WaitEvent(cudaEvent_t event, const char* what) {
  return Broken(PollCuda(stream_, event, opts_.deadline, what));
}

absl::Status CudaBackend::Drain(const char* what) { return WaitEvent(nullptr, what); }

absl::Status CudaBackend::Embed(const int32_t* tokens, int rows, int row0) {
  RETURN_IF_ERROR(Usable());
  if (embedding_ == nullptr) {
    return absl::FailedPreconditionError("this shard holds no embedding");
  }
  if (rows == 0) return absl::OkStatus();
  if (row0 < 0 || rows < 0 || row0 + rows > limits_.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("embedding rows [", row0, ", ", row0 + rows,
                                                   ") outside ", limits_.max_tokens));
  }
  RETURN_IF_ERROR(CudaCheck(cudaSetDevice(device_), "cudaSetDevice"));
  // The ids of the previous micro-batch may still be on their way to the device.
  RETURN_IF_ERROR(WaitEvent(ids_copied_, "embedding ids"));
  std::memcpy(ids_host_ + row0, tokens, sizeof(int32_t) * rows);
  absl::Status st = CudaCheck(cudaMemcpyAsync(ids_dev_ + row0, ids_host_ + row0,
                                              sizeof(int32_t) * rows, cudaMemcpyHostToDevice,
                                              stream_),
                              "copy embedding ids");
  if (st.ok()) st = CudaCheck(cudaEventRecord(ids_copied_, stream_), "cudaEventRecord");
  if (st.ok()) {
    st = cuda::Embedding({.table = embedding_,
                          .ids = ids_dev_ + row0,
                          .num_tokens = rows,
                          .hidden = H_,
                          .out = hidden_ + static_cast<size_t>(row0) * H_},
                         stream_);
  }
  return Broken(st);
}

absl::Status CudaBackend::Prepare(std::span<const SeqEntry> seqs, const int32_t* block_tables) {
  const int bs = kv_.block_size;
  LayerShape sh;
  bool all_single = true;
  for (const SeqEntry& s : seqs) {
    if (s.num_tokens == 0) continue;
    if (sh.T + s.num_tokens > limits_.max_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("micro-batch carries more than ", limits_.max_tokens, " tokens"));
    }
    const int needed = (s.start_pos + s.num_tokens + bs - 1) / bs;
    sh.T += s.num_tokens;
    ++sh.S;
    sh.stride = std::max(sh.stride, needed);
    all_single = all_single && s.num_tokens == 1;
    if (s.num_tokens == 1) {
      ++sh.ND;
    } else {
      sh.NT += (s.num_tokens + cuda::kPrefillTileRows - 1) / cuda::kPrefillTileRows;
    }
  }
  const bool static_step = sh.S > 0 && all_single && sh.S <= static_batch_limit_;
  if (static_step) {  // the layout must depend on the batch size alone
    sh.stride = max_blocks_per_seq_;
    sh.ND = sh.S;
    sh.NT = 0;
  }
  shape_ = sh;
  layout_ = MetaLayout::For(sh);
  // The previous micro-batch's inputs may still be on their way to the device.
  RETURN_IF_ERROR(WaitEvent(meta_copied_, "step inputs"));
  uint8_t* m = meta_host_;
  auto at = [m](size_t off) { return reinterpret_cast<int32_t*>(m + off); };
  std::memset(at(layout_.tables), 0, sizeof(int32_t) * sh.S * static_cast<size_t>(sh.stride));
  int j = 0, tile = 0, dec = 0;
  for (const SeqEntry& s : seqs) {
    if (s.num_tokens == 0) continue;
    const int32_t* table = block_tables + s.block_offset;
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
    if (static_step || s.num_tokens == 1) {
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
  RETURN_IF_ERROR(Broken(CudaCheck(
      cudaMemcpyAsync(meta_dev_, meta_host_, layout_.bytes, cudaMemcpyHostToDevice, stream_),
      "copy step inputs")));
  return Broken(CudaCheck(cudaEventRecord(meta_copied_, stream_), "cudaEventRecord"));
}

absl::Status CudaBackend::LocalMoe(int l, bool static_shapes) {
  const Layer& L = layers_[l - layer_begin_];
  const int T = shape_.T;
  cuda::ExpertFfnParams ffn = ffn_;
  ffn.w13 = L.w13;
  ffn.w2 = L.w2;
  ffn.num_experts = L.num_local;  // every expert, in id order: slot = expert
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
    RETURN_IF_ERROR(cuda::MoePermute(mp, stream_));
    RETURN_IF_ERROR(cuda::ExpertFfnBatched(gemm_, ffn, ptrs_, slots, T));
  } else {
    RETURN_IF_ERROR(cuda::MoePermute(mp, stream_));
    RETURN_IF_ERROR(CudaCheck(cudaMemcpyAsync(counts_host_, counts_, sizeof(int32_t) * E_,
                                              cudaMemcpyDeviceToHost, stream_),
                              "copy expert counts"));
    RETURN_IF_ERROR(Drain("expert counts"));
    RETURN_IF_ERROR(cuda::ExpertFfnPacked(gemm_, ffn, counts_host_));
  }
  return cuda::MoeUnpermute({.y = ffn.y,
                             .pair_row = pair_row_,
                             .weights = topk_weights_,
                             .num_tokens = T,
                             .top_k = K_,
                             .hidden = H_,
                             .out = moe_out_},
                            stream_);
}

absl::Status CudaBackend::DispatchedMoe(int l) {
  const Layer& L = layers_[l - layer_begin_];
  const int T = shape_.T, P = ep_;
  const size_t H = H_;
  // 1. The router's choices, to the host.
  if (T > 0) {
    RETURN_IF_ERROR(CudaCheck(cudaMemcpyAsync(topk_experts_host_, topk_experts_,
                                              sizeof(int32_t) * T * K_, cudaMemcpyDeviceToHost,
                                              stream_),
                              "copy expert choices"));
    RETURN_IF_ERROR(CudaCheck(cudaMemcpyAsync(topk_weights_host_, topk_weights_,
                                              sizeof(float) * T * K_, cudaMemcpyDeviceToHost,
                                              stream_),
                              "copy expert weights"));
    RETURN_IF_ERROR(Drain("expert choices"));
  }
  RETURN_IF_ERROR(plan_->PlanSend(l, T, topk_experts_host_, topk_weights_host_));
  // 2. Row counts and the pairs each row carries, on the host group.
  for (int r = 0; r < P; ++r) counts_out_[r] = static_cast<int64_t>(plan_->send_rows()[r]);
  RETURN_IF_ERROR(ep_control_->AllToAll(counts_out_.data(), counts_in_.data(), sizeof(int64_t)));
  size_t recv_total = 0;
  for (int r = 0; r < P; ++r) {
    // A negative count becomes a huge one, which the check below refuses.
    recv_rows_of_[r] = static_cast<size_t>(counts_in_[r]);
    recv_total += recv_rows_of_[r];
  }
  RETURN_IF_ERROR(plan_->CheckRecvRows(recv_rows_of_));
  const std::vector<size_t>& send_rows = plan_->send_rows();
  const size_t meta_bytes = plan_->meta_words() * sizeof(int32_t);
  meta_out_.Set(send_rows, meta_bytes);
  meta_in_.Set(recv_rows_of_, meta_bytes);
  recv_meta_.resize(std::max<size_t>(recv_total * plan_->meta_words(), 1));
  RETURN_IF_ERROR(ep_control_->AllToAllV(plan_->send_meta().data(), meta_out_.bytes,
                                         meta_out_.offsets, recv_meta_.data(), meta_in_.bytes,
                                         meta_in_.offsets));
  RETURN_IF_ERROR(plan_->PlanRecv(l, recv_rows_of_, recv_meta_.data()));
  // 3. The indices, to the device (the host copy is free again once the exchange below has
  //    drained the stream).
  const int64_t S = plan_->total_send_rows(), R = plan_->total_recv_rows(),
                G = plan_->total_pairs();
  const int C = plan_->combine_width();
  // The previous layer's indices may still be on their way to the device.
  RETURN_IF_ERROR(WaitEvent(index_copied_, "dispatch indices"));
  auto upload = [&](size_t at, const void* from, size_t bytes, const char* what) -> absl::Status {
    if (bytes == 0) return absl::OkStatus();
    std::memcpy(index_host_ + at, from, bytes);
    return CudaCheck(cudaMemcpyAsync(index_dev_ + at, index_host_ + at, bytes,
                                     cudaMemcpyHostToDevice, stream_),
                     what);
  };
  RETURN_IF_ERROR(upload(index_.send_token, plan_->send_token().data(), sizeof(int32_t) * S,
                         "copy send rows"));
  RETURN_IF_ERROR(upload(index_.group_row, plan_->group_row().data(), sizeof(int32_t) * G,
                         "copy expert groups"));
  RETURN_IF_ERROR(upload(index_.pair_group, plan_->pair_group().data(),
                         sizeof(int32_t) * R * K_, "copy pairs"));
  RETURN_IF_ERROR(upload(index_.pair_weight, plan_->pair_weight().data(),
                         sizeof(float) * R * K_, "copy pair weights"));
  RETURN_IF_ERROR(upload(index_.combine_rows, plan_->combine_rows().data(),
                         sizeof(int32_t) * T * C, "copy combine rows"));
  RETURN_IF_ERROR(CudaCheck(cudaEventRecord(index_copied_, stream_), "cudaEventRecord"));
  // 4. Dispatch: rows packed by destination, exchanged on the device.
  RETURN_IF_ERROR(cuda::GatherRows({.x = normed_,
                                    .row_of = index_dev_ + index_.send_token,
                                    .num_rows = S,
                                    .hidden = H_,
                                    .rows = send_rows_},
                                   stream_));
  rows_out_.Set(send_rows, H * sizeof(bf16));
  rows_in_.Set(recv_rows_of_, H * sizeof(bf16));
  sums_out_.Set(recv_rows_of_, H * sizeof(float));  // back to where the rows came from
  sums_in_.Set(send_rows, H * sizeof(float));
  // The exchanges wait for the whole stream: drain the packing first, so the time the
  // dispatch meter books as waiting is the exchange's own.
  RETURN_IF_ERROR(Drain("dispatch packing"));
  RETURN_IF_ERROR(ep_metered_.AllToAllV(send_rows_, rows_out_.bytes, rows_out_.offsets,
                                        recv_rows_, rows_in_.bytes, rows_in_.offsets));
  // 5. Experts over the pairs grouped by local slot, weighted sums per received row.
  if (G > 0) {
    cuda::ExpertFfnParams ffn = ffn_;
    ffn.w13 = L.w13;
    ffn.w2 = L.w2;
    ffn.num_experts = L.num_local;
    RETURN_IF_ERROR(cuda::GatherRows({.x = recv_rows_,
                                      .row_of = index_dev_ + index_.group_row,
                                      .num_rows = G,
                                      .hidden = H_,
                                      .rows = ffn.rows},
                                     stream_));
    RETURN_IF_ERROR(cuda::ExpertFfnPacked(gemm_, ffn, plan_->slot_counts().data()));
    RETURN_IF_ERROR(cuda::MoeUnpermute(
        {.y = ffn.y,
         .pair_row = index_dev_ + index_.pair_group,
         .weights = reinterpret_cast<const float*>(index_dev_ + index_.pair_weight),
         .num_tokens = static_cast<int>(R),
         .top_k = K_,
         .hidden = H_,
         .out = partial_},
        stream_));
  }
  // 6. Combine: partial sums back to their tokens' ranks, added per token in a fixed order
  //    (the experts' time drained first: it is compute, not waiting).
  RETURN_IF_ERROR(Drain("experts"));
  RETURN_IF_ERROR(ep_metered_.AllToAllV(partial_, sums_out_.bytes, sums_out_.offsets, returned_,
                                        sums_in_.bytes, sums_in_.offsets));
  if (T == 0) return absl::OkStatus();
  return cuda::MoeUnpermute({.y = returned_,
                             .pair_row = index_dev_ + index_.combine_rows,
                             .weights = ones_,
                             .num_tokens = T,
                             .top_k = C,
                             .hidden = H_,
                             .out = moe_out_},
                            stream_);
}

absl::Status CudaBackend::EnqueueLayer(int l, float* x, bool static_shapes) {
  if (shape_.T > 0) RETURN_IF_ERROR(EnqueueAttention(l, x));
  // Collective in expert parallelism: every rank of the group, even with no rows.
  if (ep_ > 1) return DispatchedMoe(l);
  if (shape_.T == 0) return absl::OkStatus();
  return LocalMoe(l, static_shapes);
}

absl::Status CudaBackend::EnqueueAttention(int l, float* x) {
  const Layer& L = layers_[l - layer_begin_];
  const int T = shape_.T;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  cudaStream_t st = stream_;
  {
    // x += moe_out of the previous layer of this stage; normed = input_norm(x).
    RETURN_IF_ERROR(cuda::AddRmsNorm({.x = x,
                                      .residual = l == layer_begin_ ? nullptr : moe_out_,
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
          ap, {Meta<int32_t>(layout_.tile_seq), Meta<int32_t>(layout_.tile_row0), shape_.NT},
          st));
    }
    if (shape_.ND > 0) {
      RETURN_IF_ERROR(
          cuda::DecodeAttention(ap, {Meta<int32_t>(layout_.decode_seq), shape_.ND}, st));
    }
    RETURN_IF_ERROR(cuda::Gemm(gemm_, {.x = attn_,
                                       .rows = T,
                                       .w = L.wo,
                                       .n = H_,
                                       .k = q_dim_,
                                       .y = attn_out_,
                                       .out = cuda::GemmOut::kF32}));
    // x += attention; normed = post_attention_norm(x).
    RETURN_IF_ERROR(cuda::AddRmsNorm({.x = x,
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
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::EnqueueLayers(float* x, bool static_shapes) {
  for (int l = layer_begin_; l < layer_end_; ++l) {
    RETURN_IF_ERROR(EnqueueLayer(l, x, static_shapes));
  }
  // The stage hands on a complete residual stream: x += the last layer's MoE.
  if (shape_.T == 0 || num_layers_ == 0) return absl::OkStatus();
  return cuda::AddInPlace(x, moe_out_, static_cast<int64_t>(shape_.T) * H_, stream_);
}

absl::Status CudaBackend::RunCaptured(const GraphKey& key,
                                      const std::function<absl::Status()>& enqueue) {
  Graph& g = graphs_[key];
  // The cap counts shapes: a stage of L layers keeps L graphs per shape when EP > 1.
  const size_t cap = kMaxGraphs * static_cast<size_t>(ep_ > 1 ? std::max(1, num_layers_) : 1);
  if (!opts_.use_graphs || g.disabled || (g.exec == nullptr && g.warmups < 1) ||
      (g.exec == nullptr && graphs_.size() > cap)) {
    ++g.warmups;
    return enqueue();
  }
  if (g.exec == nullptr) {
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      // Capture refused (nothing was enqueued): this shape runs eagerly from now on.
      cudaGetLastError();
      g.disabled = true;
      ++stats_.graph_failures;
      return enqueue();
    }
    const absl::Status enqueued = enqueue();
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    cudaError_t inst = cudaErrorUnknown;
    if (enqueued.ok() && ended == cudaSuccess) {
      inst = cudaGraphInstantiate(&g.exec, graph, 0);
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      // Capture failed (nothing ran): run this shape eagerly from now on.
      cudaGetLastError();
      g.exec = nullptr;
      g.disabled = true;
      ++stats_.graph_failures;
      return enqueue();
    }
    ++stats_.graph_captures;
  }
  ++stats_.graph_launches;
  return CudaCheck(cudaGraphLaunch(g.exec, stream_), "cudaGraphLaunch");
}

absl::Status CudaBackend::RunDecode(float* x, int row0) {
  const int64_t launches = stats_.graph_launches;
  if (ep_ == 1) {
    // The whole stage in one graph.
    RETURN_IF_ERROR(RunCaptured({-1, shape_.S, row0},
                                [&] { return EnqueueLayers(x, /*static_shapes=*/true); }));
  } else {
    // Each layer's attention block in a graph; the exchange between them runs eagerly (its
    // sizes come from the routing, and both device communicators need them on the host).
    for (int l = layer_begin_; l < layer_end_; ++l) {
      RETURN_IF_ERROR(RunCaptured({l, shape_.S, row0}, [&] { return EnqueueAttention(l, x); }));
      RETURN_IF_ERROR(DispatchedMoe(l));
    }
    if (num_layers_ > 0) {
      RETURN_IF_ERROR(
          cuda::AddInPlace(x, moe_out_, static_cast<int64_t>(shape_.T) * H_, stream_));
    }
  }
  if (stats_.graph_launches == launches) ++stats_.eager_steps;
  return absl::OkStatus();
}

absl::Status CudaBackend::RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables,
                                    int row0, const RoutingCapture* capture) {
  RETURN_IF_ERROR(Usable());
  if (capture != nullptr) {
    return absl::UnimplementedError(
        "routing (return_routing, switchyard trace) is not recorded by the CUDA backend yet; "
        "run on --device cpu");
  }
  RETURN_IF_ERROR(Broken(CudaCheck(cudaSetDevice(device_), "cudaSetDevice")));
  RETURN_IF_ERROR(Prepare(seqs, block_tables));
  if (row0 < 0 || row0 + shape_.T > limits_.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("micro-batch rows [", row0, ", ",
                                                   row0 + shape_.T, ") outside ",
                                                   limits_.max_tokens));
  }
  float* x = hidden_ + static_cast<size_t>(row0) * H_;
  const bool static_step = shape_.S > 0 && shape_.ND == shape_.S && shape_.NT == 0 &&
                           shape_.S <= static_batch_limit_ && shape_.T == shape_.S;
  absl::Status st;
  if (static_step) {
    st = RunDecode(x, row0);
  } else {
    ++stats_.eager_steps;
    st = EnqueueLayers(x, /*static_shapes=*/false);
  }
  return Broken(st);
}

absl::Status CudaBackend::Head(const StepPlan& local, StepResult* result) {
  RETURN_IF_ERROR(Usable());
  if (lm_head_ == nullptr) return absl::FailedPreconditionError("this shard holds no head");
  RETURN_IF_ERROR(Broken(CudaCheck(cudaSetDevice(device_), "cudaSetDevice")));
  StepHead::RowsForHead(local, &head_rows_);
  const int R = static_cast<int>(head_rows_.size());
  const size_t n = local.seqs.size();
  seq_request_.assign(n, -1);
  // The previous head's inputs were copied before its results came back (Drain below).
  int32_t* rows_host = head_host_;
  auto* requests = reinterpret_cast<cuda::SampleRequest*>(head_host_ + head_requests_at_);
  if (R > 0) std::memcpy(rows_host, head_rows_.data(), sizeof(int32_t) * R);
  int NR = 0, head = 0;
  bool want_logits = false;
  for (size_t i = 0; i < n; ++i) {
    const SeqEntry& s = local.seqs[i];
    const int rows = HeadRows(s);
    if (rows == 0) continue;
    want_logits |= ReturnedLogitRows(s) > 0;
    if (s.sample) {
      cuda::SampleRequest q;
      q.row = head + rows - 1;
      q.top_k = s.sampling.top_k;
      q.temperature = s.sampling.temperature;
      q.top_p = s.sampling.top_p;
      q.seed = s.sampling.seed;
      q.step = s.sample_index;
      seq_request_[i] = NR;
      requests[NR++] = q;
    }
    head += rows;
  }
  absl::Status st;
  if (R > 0) {
    int32_t* rows_dev = head_dev_;
    auto* requests_dev = reinterpret_cast<cuda::SampleRequest*>(head_dev_ + head_requests_at_);
    st = CudaCheck(cudaMemcpyAsync(rows_dev, rows_host, sizeof(int32_t) * R,
                                   cudaMemcpyHostToDevice, stream_),
                   "copy head rows");
    if (st.ok() && NR > 0) {
      st = CudaCheck(cudaMemcpyAsync(requests_dev, requests, sizeof(cuda::SampleRequest) * NR,
                                     cudaMemcpyHostToDevice, stream_),
                     "copy sampling requests");
    }
    if (st.ok()) {
      st = cuda::AddRmsNorm({.x = hidden_,
                             .weight = final_norm_,
                             .rows = rows_dev,
                             .num_rows = R,
                             .hidden = H_,
                             .eps = static_cast<float>(cfg_.rms_norm_eps),
                             .out = head_normed_},
                            stream_);
    }
    if (st.ok()) {
      st = cuda::Gemm(gemm_, {.x = head_normed_,
                              .rows = R,
                              .w = lm_head_,
                              .n = V_,
                              .k = H_,
                              .y = logits_,
                              .out = cuda::GemmOut::kF32});
    }
    if (st.ok()) {
      st = cuda::Sample({.logits = logits_,
                         .vocab = V_,
                         .requests = requests_dev,
                         .num_requests = NR,
                         .tokens = next_tokens_},
                        stream_);
    }
    if (st.ok() && NR > 0) {
      st = CudaCheck(cudaMemcpyAsync(tokens_host_, next_tokens_, sizeof(int32_t) * NR,
                                     cudaMemcpyDeviceToHost, stream_),
                     "copy next tokens");
    }
    if (st.ok() && want_logits) {
      st = CudaCheck(cudaMemcpyAsync(logits_host_, logits_, sizeof(float) * R * V_,
                                     cudaMemcpyDeviceToHost, stream_),
                     "copy logits");
    }
  }
  if (st.ok()) st = Drain("CUDA step");
  RETURN_IF_ERROR(Broken(st));

  result->next_tokens.assign(n, -1);
  result->logits_offset.assign(n, 0);
  result->logits_rows.assign(n, 0);
  result->logits.clear();
  int32_t out_rows = 0;
  head = 0;
  for (size_t i = 0; i < n; ++i) {
    const SeqEntry& s = local.seqs[i];
    const int rows = HeadRows(s);
    if (rows == 0) continue;
    if (seq_request_[i] >= 0) result->next_tokens[i] = tokens_host_[seq_request_[i]];
    const int keep = ReturnedLogitRows(s);
    if (keep > 0) {
      // The last `keep` of the sequence's head rows.
      const size_t first = static_cast<size_t>(head + rows - keep) * V_;
      result->logits_offset[i] = out_rows;
      result->logits_rows[i] = keep;
      result->logits.insert(result->logits.end(), logits_host_ + first,
                            logits_host_ + first + static_cast<size_t>(keep) * V_);
      out_rows += keep;
    }
    head += rows;
  }
  return absl::OkStatus();
}

const std::vector<std::vector<int64_t>>& CudaBackend::expert_token_counts() const {
  if (ep_ > 1) return plan_->expert_token_counts();
  // One EP rank: the device counters of MoePermute (read on the thread that runs the steps,
  // between steps; on an error the last counts read stay).
  if (!broken_.ok() || cudaSetDevice(device_) != cudaSuccess ||
      !PollCuda(stream_, nullptr, opts_.deadline, "expert counts").ok()) {
    cudaGetLastError();
    return expert_counts_;
  }
  for (int l = layer_begin_; l < layer_end_; ++l) {
    if (cudaMemcpy(expert_counts_[l].data(), layers_[l - layer_begin_].routed,
                   sizeof(int64_t) * E_, cudaMemcpyDeviceToHost) != cudaSuccess) {
      cudaGetLastError();
      break;
    }
  }
  return expert_counts_;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaStageBackend>> CudaStageBackend::Create(
    const ModelWeights& weights, Communicator* ep_control, Communicator* ep_device,
    ExpertRanks routing, const KvPoolOptions& kv, const ForwardLimits& limits,
    const CudaBackendOptions& options, cudaStream_t stream) {
  auto backend = std::make_unique<CudaBackend>(weights, ep_control, ep_device, std::move(routing),
                                               kv, limits, options, stream);
  RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<CudaStageBackend>(std::move(backend));
}

}  // namespace switchyard
