#include "worker/distributed_executor.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

enum Command : uint32_t { kStep = 1, kHeartbeat = 2, kShutdown = 3, kStatus = 4 };

struct PlanHeader {
  uint32_t command = 0;
  uint32_t num_seqs = 0;
  uint32_t num_tokens = 0;
  uint32_t num_blocks = 0;
};

constexpr int kResultTag = 900;  // activations use the micro-batch index as tag

int HeadRows(const SeqEntry& s) {
  if (s.num_tokens == 0) return 0;
  if (s.logits == LogitsMode::kAll) return s.num_tokens;
  return s.logits == LogitsMode::kLast ? 1 : 0;
}

}  // namespace

DistributedWorker::DistributedWorker(const ModelWeights& weights, const ParallelShape& shape,
                                     Communicator* world, Communicator* ep_group,
                                     ExpertRanks routing, const KvPoolOptions& kv,
                                     const ForwardLimits& limits)
    : weights_(weights),
      shape_(shape),
      world_(world),
      kv_({.num_layers = weights.spec().layer_end - weights.spec().layer_begin,
           .num_blocks = kv.num_blocks,
           .block_size = kv.block_size,
           .kv_dim = weights.config().kv_dim()}),
      moe_(weights, ep_group, std::move(routing), limits.max_tokens),
      forward_(weights, &kv_, &moe_, limits),
      head_(weights.config().vocab_size),
      hidden_(static_cast<size_t>(limits.max_tokens) * weights.config().hidden_size) {
  if (weights.spec().has_head) {
    logits_.resize(static_cast<size_t>(limits.max_tokens) * weights.config().vocab_size);
  }
}

void DistributedWorker::SelectLocal(const StepPlan& plan) {
  local_.Clear();
  local_to_global_.clear();
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SeqEntry& s = plan.seqs[i];
    if (s.dp_rank != shape_.ep_rank()) continue;
    local_.AddSequence(
        s, std::span<const int32_t>(plan.tokens).subspan(s.token_offset, s.num_tokens),
        std::span<const int32_t>(plan.block_tables).subspan(s.block_offset, s.num_blocks));
    local_to_global_.push_back(static_cast<int32_t>(i));
  }
}

absl::Status DistributedWorker::RunStep(const StepPlan& plan, StepResult* result) {
  ++steps_;
  SelectLocal(plan);
  const int H = weights_.config().hidden_size;
  const int T = local_.total_tokens();
  if (T > forward_.limits().max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("data-parallel rank ", shape_.ep_rank(),
                                                   " has ", T, " tokens, over the limit of ",
                                                   forward_.limits().max_tokens));
  }
  const int stage = shape_.stage(), M = shape_.pp;
  const bool first = stage == 0, last = stage == shape_.pp - 1;
  // Micro-batches: contiguous runs of sequences of about T / M tokens each. Every stage
  // computes the same split from the same plan, so sender and receiver agree on sizes.
  size_t seq = 0;
  int row = 0;
  for (int m = 0; m < M; ++m) {
    const int target = static_cast<int>((static_cast<int64_t>(T) * (m + 1) + M - 1) / M);
    micro_batch_.clear();
    const int row0 = row;
    while (seq < local_.seqs.size() && (row < target || m == M - 1)) {
      SeqEntry s = local_.seqs[seq++];
      s.token_offset -= row0;
      row += s.num_tokens;
      micro_batch_.push_back(s);
    }
    const int rows = row - row0;
    float* h = hidden_.data() + static_cast<size_t>(row0) * H;
    const size_t bytes = static_cast<size_t>(rows) * H * sizeof(float);
    if (first) {
      forward_.Embed(local_.tokens.data() + row0, rows, h);
    } else if (rows > 0) {
      RETURN_IF_ERROR(world_->Recv(h, bytes, shape_.WorldRank(stage - 1, shape_.ep_rank()), m));
    }
    RETURN_IF_ERROR(forward_.RunLayers(micro_batch_, local_.block_tables.data(), h));
    if (!last && rows > 0) {
      RETURN_IF_ERROR(world_->Send(h, bytes, shape_.WorldRank(stage + 1, shape_.ep_rank()), m));
    }
  }
  if (last) {
    StepHead::RowsForHead(local_, &head_rows_);
    forward_.Head(hidden_.data(), head_rows_, logits_.data());
    head_.Finish(local_, logits_.data(), &local_result_);
    if (shape_.world_rank != 0) RETURN_IF_ERROR(SendResults());
  }
  if (shape_.world_rank == 0) RETURN_IF_ERROR(CollectResults(plan, result));
  return absl::OkStatus();
}

absl::Status DistributedWorker::SendResults() {
  const size_t tok_bytes = local_result_.next_tokens.size() * sizeof(int32_t);
  const size_t logit_bytes = local_result_.logits.size() * sizeof(float);
  message_.resize(tok_bytes + logit_bytes);
  std::memcpy(message_.data(), local_result_.next_tokens.data(), tok_bytes);
  std::memcpy(message_.data() + tok_bytes, local_result_.logits.data(), logit_bytes);
  if (message_.empty()) return absl::OkStatus();
  return world_->Send(message_.data(), message_.size(), 0, kResultTag);
}

absl::Status DistributedWorker::CollectResults(const StepPlan& plan, StepResult* result) {
  const size_t n = plan.seqs.size();
  const int V = weights_.config().vocab_size;
  result->next_tokens.assign(n, -1);
  result->logits_offset.assign(n, 0);
  result->logits_rows.assign(n, 0);
  int32_t total_rows = 0;
  for (size_t i = 0; i < n; ++i) {
    result->logits_offset[i] = total_rows;
    result->logits_rows[i] = HeadRows(plan.seqs[i]);
    total_rows += result->logits_rows[i];
  }
  result->logits.resize(static_cast<size_t>(total_rows) * V);
  for (int dp = 0; dp < shape_.ep; ++dp) {
    const int source = shape_.WorldRank(shape_.pp - 1, dp);
    // The sequences of this DP index, in plan order, and the bytes they produce.
    size_t count = 0, rows = 0;
    for (const SeqEntry& s : plan.seqs) {
      if (s.dp_rank != dp) continue;
      ++count;
      rows += HeadRows(s);
    }
    const size_t tok_bytes = count * sizeof(int32_t);
    const int32_t* tokens;
    const float* logits;
    if (source == 0) {
      tokens = local_result_.next_tokens.data();
      logits = local_result_.logits.data();
    } else {
      message_.resize(tok_bytes + rows * V * sizeof(float));
      if (!message_.empty()) {
        RETURN_IF_ERROR(world_->Recv(message_.data(), message_.size(), source, kResultTag));
      }
      tokens = reinterpret_cast<const int32_t*>(message_.data());
      logits = reinterpret_cast<const float*>(message_.data() + tok_bytes);
    }
    size_t k = 0, row = 0;
    for (size_t i = 0; i < n; ++i) {
      if (plan.seqs[i].dp_rank != dp) continue;
      result->next_tokens[i] = tokens[k++];
      const size_t r = result->logits_rows[i];
      std::memcpy(&result->logits[static_cast<size_t>(result->logits_offset[i]) * V],
                  logits + row * V, r * V * sizeof(float));
      row += r;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RankStatus>> DistributedWorker::GatherStatus() {
  // Fixed-size record per rank: a header, then per (layer, expert) of the whole model the
  // routed-token count and whether this rank holds the expert.
  const ModelConfig& cfg = weights_.config();
  const size_t LE = static_cast<size_t>(cfg.num_hidden_layers) * cfg.num_local_experts;
  const size_t words = 8 + 2 * LE;
  std::vector<int64_t> mine(words, 0);
  const ShardSpec& spec = weights_.spec();
  mine[0] = shape_.world_rank;
  mine[1] = shape_.stage();
  mine[2] = shape_.ep_rank();
  mine[3] = spec.layer_begin;
  mine[4] = spec.layer_end;
  mine[5] = static_cast<int64_t>(weights_.resident_bytes());
  mine[6] = static_cast<int64_t>(kv_.shape().bytes());
  mine[7] = steps_;
  const auto& counts = moe_.dispatcher().expert_token_counts();
  for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
    for (int e = 0; e < cfg.num_local_experts; ++e) {
      mine[8 + l * cfg.num_local_experts + e] = counts[l][e];
    }
    for (int e : spec.local_experts[l - spec.layer_begin]) {
      mine[8 + LE + l * cfg.num_local_experts + e] = 1;
    }
  }
  const int world = shape_.ep * shape_.pp;
  std::vector<int64_t> all(shape_.world_rank == 0 ? words * world : 0);
  RETURN_IF_ERROR(world_->Gather(mine.data(), words * sizeof(int64_t), all.data(), 0));
  std::vector<RankStatus> out;
  if (shape_.world_rank != 0) return out;
  for (int r = 0; r < world; ++r) {
    const int64_t* rec = &all[r * words];
    RankStatus st;
    st.world_rank = static_cast<int>(rec[0]);
    st.stage = static_cast<int>(rec[1]);
    st.ep_rank = static_cast<int>(rec[2]);
    st.layer_begin = static_cast<int>(rec[3]);
    st.layer_end = static_cast<int>(rec[4]);
    st.weight_bytes = rec[5];
    st.kv_bytes = rec[6];
    st.steps = rec[7];
    for (int l = st.layer_begin; l < st.layer_end; ++l) {
      std::vector<int> held;
      std::vector<int64_t> tokens(cfg.num_local_experts);
      for (int e = 0; e < cfg.num_local_experts; ++e) {
        tokens[e] = rec[8 + l * cfg.num_local_experts + e];
        if (rec[8 + LE + l * cfg.num_local_experts + e] != 0) held.push_back(e);
      }
      st.experts.push_back(std::move(held));
      st.expert_tokens.push_back(std::move(tokens));
    }
    out.push_back(std::move(st));
  }
  return out;
}

absl::StatusOr<std::vector<RankStatus>> DistributedExecutor::CollectStatus() {
  RETURN_IF_ERROR(BroadcastPlan(kStatus, StepPlan()));
  return worker_->GatherStatus();
}

absl::Status DistributedExecutor::BroadcastPlan(uint32_t command, const StepPlan& plan) {
  PlanHeader header{command, static_cast<uint32_t>(plan.seqs.size()),
                    static_cast<uint32_t>(plan.tokens.size()),
                    static_cast<uint32_t>(plan.block_tables.size())};
  Communicator* world = worker_->world();
  RETURN_IF_ERROR(world->Broadcast(&header, sizeof(header), 0));
  if (command != kStep) return absl::OkStatus();
  const size_t a = plan.seqs.size() * sizeof(SeqEntry);
  const size_t b = plan.tokens.size() * sizeof(int32_t);
  const size_t c = plan.block_tables.size() * sizeof(int32_t);
  buffer_.resize(a + b + c);
  std::memcpy(buffer_.data(), plan.seqs.data(), a);
  std::memcpy(buffer_.data() + a, plan.tokens.data(), b);
  std::memcpy(buffer_.data() + a + b, plan.block_tables.data(), c);
  if (buffer_.empty()) return absl::OkStatus();
  return world->Broadcast(buffer_.data(), buffer_.size(), 0);
}

absl::Status DistributedExecutor::Execute(const StepPlan& plan, StepResult* result) {
  const ParallelShape& shape = worker_->shape();
  std::vector<int> per_dp(shape.ep, 0);
  for (const SeqEntry& s : plan.seqs) {
    if (s.dp_rank < 0 || s.dp_rank >= shape.ep) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, " has dp_rank ",
                                                     s.dp_rank, " outside [0, ", shape.ep, ")"));
    }
    per_dp[s.dp_rank] += s.num_tokens;
    if (per_dp[s.dp_rank] > max_step_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat("data-parallel rank ", s.dp_rank,
                                                     " would get more than ", max_step_tokens(),
                                                     " tokens in one step"));
    }
  }
  RETURN_IF_ERROR(BroadcastPlan(kStep, plan));
  return worker_->RunStep(plan, result);
}

absl::Status DistributedExecutor::Heartbeat() {
  RETURN_IF_ERROR(BroadcastPlan(kHeartbeat, StepPlan()));
  return worker_->world()->Barrier();
}

absl::Status DistributedExecutor::Shutdown() { return BroadcastPlan(kShutdown, StepPlan()); }

absl::Status RunWorkerLoop(DistributedWorker* worker) {
  Communicator* world = worker->world();
  StepPlan plan;
  std::vector<char> buffer;
  while (true) {
    PlanHeader header;
    RETURN_IF_ERROR(world->Broadcast(&header, sizeof(header), 0));
    if (header.command == kShutdown) return absl::OkStatus();
    if (header.command == kHeartbeat) {
      RETURN_IF_ERROR(world->Barrier());
      continue;
    }
    if (header.command == kStatus) {
      RETURN_IF_ERROR(worker->GatherStatus().status());
      continue;
    }
    if (header.command != kStep) {
      return absl::InternalError(absl::StrCat("unknown command ", header.command, " from rank 0"));
    }
    const size_t a = header.num_seqs * sizeof(SeqEntry);
    const size_t b = header.num_tokens * sizeof(int32_t);
    const size_t c = header.num_blocks * sizeof(int32_t);
    buffer.resize(a + b + c);
    if (!buffer.empty()) RETURN_IF_ERROR(world->Broadcast(buffer.data(), buffer.size(), 0));
    plan.seqs.resize(header.num_seqs);
    plan.tokens.resize(header.num_tokens);
    plan.block_tables.resize(header.num_blocks);
    std::memcpy(plan.seqs.data(), buffer.data(), a);
    std::memcpy(plan.tokens.data(), buffer.data() + a, b);
    std::memcpy(plan.block_tables.data(), buffer.data() + a + b, c);
    RETURN_IF_ERROR(worker->RunStep(plan, nullptr));
  }
}

}  // namespace switchyard
