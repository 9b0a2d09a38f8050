// The CPU stage backend (worker/stage_backend.h): ShardForward, a host KV cache, the MoE over
// the EP group, the head on the host.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "comm/metered_communicator.h"
#include "common/status_macros.h"
#include "worker/expert_parallel_moe.h"
#include "worker/stage_backend.h"
#include "worker/step_head.h"

namespace switchyard {
namespace {

// One thread at the lowest priority (nice 19) that runs queued jobs in order: the page reads
// of an expert move, and the release of the experts a move left. Started with the backend,
// so a move does not pay for creating a thread in the step's time; it sleeps until then. Its
// jobs use the CPU time the steps leave (ranks waiting on peers, idle cores) instead of
// taking it from them. Post never waits (the step thread must not wait on a thread at the
// lowest priority).
class BackgroundReader {
 public:
  BackgroundReader() : thread_([this] { Run(); }) {}
  ~BackgroundReader() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();  // after the jobs queued
  }
  void Post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }
  // Returns once every job posted so far has run.
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return jobs_.empty() && !running_; });
  }

 private:
  void Run() {
    (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return !jobs_.empty() || stopping_; });
      if (jobs_.empty()) return;  // stopping with nothing left
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      running_ = true;
      lock.unlock();
      job();
      lock.lock();
      running_ = false;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool running_ = false;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the members above exist
};

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

  absl::Status PrepareExperts(int64_t generation, const ExpertRanks& routing,
                              ModelWeights* weights, const SafetensorsCheckpoint* ckpt) override {
    if (weights != &weights_ || ckpt == nullptr) {
      return absl::FailedPreconditionError(
          "moving experts needs this shard's weights and its checkpoint");
    }
    const ModelConfig& cfg = weights_.config();
    if (static_cast<int>(routing.size()) != cfg.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("expert placement of ", routing.size(),
                                                     " layers for a model of ",
                                                     cfg.num_hidden_layers));
    }
    // A preparation not switched to is superseded (its reads, queued before, still run).
    pending_.reset();
    Pending p{.generation = generation, .routing = routing, .weights = weights, .ckpt = ckpt};
    std::vector<TensorView> fetch;
    const ShardSpec& spec = weights_.spec();
    const int me = ep_group_.rank();
    for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
      if (static_cast<int>(routing[l].size()) != cfg.num_local_experts) {
        return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " has ",
                                                       routing[l].size(), " experts, want ",
                                                       cfg.num_local_experts));
      }
      for (int e = 0; e < cfg.num_local_experts; ++e) {
        const std::vector<int>& ranks = routing[l][e];
        const bool want = std::find(ranks.begin(), ranks.end(), me) != ranks.end();
        const bool have = weights_.layer(l).HasExpert(e);
        if (want && !have) {
          ASSIGN_OR_RETURN(std::vector<TensorView> t, ModelWeights::ExpertTensors(*ckpt, cfg, l, e));
          fetch.insert(fetch.end(), t.begin(), t.end());
          p.add.push_back({l, e, std::move(t)});
        } else if (have && !want) {
          p.remove.push_back({l, e, {}});
        }
      }
    }
    pending_ = std::move(p);
    // Read the new experts' pages beside the running steps (which read other pages of the
    // same read-only mapping).
    reader_.Post([this, ckpt, fetch = std::move(fetch), generation] {
      ckpt->Prefetch(fetch, nullptr);
      prepared_.store(generation, std::memory_order_release);
    });
    return absl::OkStatus();
  }

  absl::Status SwitchExperts(int64_t generation) override {
    if (!pending_.has_value() || pending_->generation != generation) {
      return absl::FailedPreconditionError(
          absl::StrCat("no expert placement ", generation, " was prepared on this rank"));
    }
    // Rank 0 switches once every rank reported its reads done (prepared_, stored as the
    // job's last action); waiting here is only a safety net.
    if (prepared_.load(std::memory_order_acquire) < generation) reader_.Wait();
    Pending p = std::move(*pending_);
    pending_.reset();
    RETURN_IF_ERROR(moe_.SetRouting(std::move(p.routing)));
    std::vector<TensorView> released;
    for (const Move& m : p.remove) {
      const ExpertWeights& x = weights_.layer(m.layer).experts[m.expert];
      for (const WeightMatrix* w : {&x.w1, &x.w3, &x.w2}) {
        released.push_back(TensorView{.dtype = w->dtype, .data = w->data, .nbytes = w->bytes()});
      }
      p.weights->SetExpert(m.layer, m.expert, {});
    }
    for (const Move& m : p.add) p.weights->SetExpert(m.layer, m.expert, m.tensors);
    // No step reads the experts left behind any more: their pages go back on the reader
    // thread, off the steps' time (unmapping hundreds of MB takes milliseconds).
    reader_.Post([ckpt = p.ckpt, released = std::move(released)] { ckpt->Release(released); });
    active_ = generation;
    return absl::OkStatus();
  }

  bool moves_experts() const override { return true; }
  int64_t experts_prepared() const override { return prepared_.load(std::memory_order_acquire); }
  int64_t experts_active() const override { return active_; }

 private:
  struct Move {
    int layer = 0, expert = 0;
    std::vector<TensorView> tensors;  // to bind (added experts)
  };
  struct Pending {
    int64_t generation = 0;
    ExpertRanks routing;
    ModelWeights* weights = nullptr;
    const SafetensorsCheckpoint* ckpt = nullptr;
    std::vector<Move> add, remove;
  };

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
  // Expert moves: the preparation in flight (its page reads on reader_).
  std::optional<Pending> pending_;
  std::atomic<int64_t> prepared_{0};
  int64_t active_ = 0;
  BackgroundReader reader_;  // last: destroyed (joined) first, while what its job uses lives
};

}  // namespace

std::unique_ptr<StageBackend> MakeCpuStageBackend(const ModelWeights& weights,
                                                  Communicator* ep_group, ExpertRanks routing,
                                                  const KvCacheShape& kv,
                                                  const ForwardLimits& limits) {
  return std::make_unique<CpuStageBackend>(weights, ep_group, std::move(routing), kv, limits);
}

}  // namespace switchyard
