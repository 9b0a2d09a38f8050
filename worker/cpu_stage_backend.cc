// The CPU stage backend (worker/stage_backend.h): ShardForward, a host KV cache, the MoE over
// the EP group, the head on the host.
#include <memory>

#include "comm/metered_communicator.h"
#include "worker/expert_parallel_moe.h"
#include "worker/stage_backend.h"
#include "worker/step_head.h"

namespace switchyard {
namespace {

class CpuStageBackend final : public StageBackend {
 public:
  CpuStageBackend(const ModelWeights& weights, Communicator* ep_group, ExpertRanks routing,
                  const KvCacheShape& kv, const ForwardLimits& limits)
      : weights_(weights),
        kv_(kv),
        ep_group_(ep_group),
        moe_(weights, &ep_group_, std::move(routing), limits.max_tokens),
        forward_(weights, &kv_, &moe_, limits),
        head_(weights.config().vocab_size),
        hidden_(static_cast<size_t>(limits.max_tokens) * weights.config().hidden_size) {
    if (weights.spec().has_head) {
      logits_.resize(static_cast<size_t>(limits.max_tokens) * weights.config().vocab_size);
    }
    head_rows_.reserve(limits.max_tokens);
  }

  absl::Status Embed(const int32_t* tokens, int rows, int row0) override {
    forward_.Embed(tokens, rows, Row(row0));
    return absl::OkStatus();
  }
  absl::Status RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables, int row0,
                         const RoutingCapture* capture) override {
    return forward_.RunLayers(seqs, block_tables, Row(row0), capture);
  }
  absl::Status Head(const StepPlan& local, StepResult* result) override {
    StepHead::RowsForHead(local, &head_rows_);
    forward_.Head(hidden_.data(), head_rows_, logits_.data());
    head_.Finish(local, logits_.data(), result);
    return absl::OkStatus();
  }
  void* hidden_rows(int row0) override { return Row(row0); }
  size_t row_bytes() const override {
    return static_cast<size_t>(weights_.config().hidden_size) * sizeof(float);
  }
  const ForwardLimits& limits() const override { return forward_.limits(); }
  uint64_t kv_bytes() const override { return kv_.shape().bytes(); }
  const std::vector<std::vector<int64_t>>& expert_token_counts() const override {
    return moe_.dispatcher().expert_token_counts();
  }
  const CommMeter& dispatch_meter() const override { return ep_group_.meter(); }

 private:
  float* Row(int row0) {
    return hidden_.data() + static_cast<size_t>(row0) * weights_.config().hidden_size;
  }

  const ModelWeights& weights_;
  PagedKvCache kv_;
  MeteredCommunicator ep_group_;  // the dispatcher's group, counted
  ExpertParallelMoe moe_;
  ShardForward forward_;
  StepHead head_;
  std::vector<float> hidden_;
  std::vector<int32_t> head_rows_;
  std::vector<float> logits_;
};

}  // namespace

std::unique_ptr<StageBackend> MakeCpuStageBackend(const ModelWeights& weights,
                                                  Communicator* ep_group, ExpertRanks routing,
                                                  const KvCacheShape& kv,
                                                  const ForwardLimits& limits) {
  return std::make_unique<CpuStageBackend>(weights, ep_group, std::move(routing), kv, limits);
}

}  // namespace switchyard
