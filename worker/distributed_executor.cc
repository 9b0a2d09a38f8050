#include "worker/distributed_executor.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/cpu_threads.h"
#include "common/status_macros.h"
#include "common/steady_time.h"

namespace switchyard {
namespace {

enum Command : uint32_t {
  kStep = 1,
  kHeartbeat = 2,
  kShutdown = 3,
  kStatus = 4,
  kPrepareExperts = 5,  // num_seqs: generation; num_tokens: words of the placement
  kSwitchExperts = 6,   // num_seqs: generation
};

// An ExpertRanks as words: layers, experts, then per (layer, expert) the replica count and
// the ranks.
std::vector<int32_t> PackRouting(const ExpertRanks& routing) {
  std::vector<int32_t> w = {static_cast<int32_t>(routing.size()),
                            routing.empty() ? 0 : static_cast<int32_t>(routing[0].size())};
  for (const auto& layer : routing) {
    for (const auto& ranks : layer) {
      w.push_back(static_cast<int32_t>(ranks.size()));
      w.insert(w.end(), ranks.begin(), ranks.end());
    }
  }
  return w;
}

absl::StatusOr<ExpertRanks> UnpackRouting(const std::vector<int32_t>& w) {
  auto bad = [] { return absl::InvalidArgumentError("malformed expert placement from rank 0"); };
  if (w.size() < 2 || w[0] < 0 || w[1] < 0) return bad();
  size_t at = 2;
  ExpertRanks routing(w[0], std::vector<std::vector<int>>(w[1]));
  for (auto& layer : routing) {
    for (auto& ranks : layer) {
      if (at >= w.size() || w[at] < 0 || at + 1 + w[at] > w.size()) return bad();
      ranks.assign(w.begin() + at + 1, w.begin() + at + 1 + w[at]);
      at += 1 + w[at];
    }
  }
  if (at != w.size()) return bad();
  return routing;
}

struct PlanHeader {
  uint32_t command = 0;
  uint32_t num_seqs = 0;
  uint32_t num_tokens = 0;
  uint32_t num_blocks = 0;
};

constexpr int kResultTag = 900;  // activations use the micro-batch index as tag
constexpr int kRoutingTag = 901;  // routing passed down the pipeline: experts, then weights

}  // namespace

void SplitMicroBatches(std::span<const SeqEntry> seqs, int count, std::vector<MicroBatch>* out) {
  out->clear();
  int64_t T = 0;
  for (const SeqEntry& s : seqs) T += s.num_tokens;
  size_t seq = 0;
  int row = 0;
  for (int m = 0; m < count; ++m) {
    const int64_t target = (T * (m + 1) + count - 1) / count;
    MicroBatch mb{.seq_begin = static_cast<int>(seq), .row0 = row};
    while (seq < seqs.size() && (row < target || m == count - 1)) row += seqs[seq++].num_tokens;
    mb.seq_end = static_cast<int>(seq);
    mb.rows = row - mb.row0;
    out->push_back(mb);
  }
}

DistributedWorker::DistributedWorker(const ModelWeights& weights, const ParallelShape& shape,
                                     Communicator* world, Communicator* stage_link,
                                     std::unique_ptr<StageBackend> backend,
                                     const KvPoolOptions& kv)
    : weights_(weights),
      shape_(shape),
      world_(world),
      stage_link_(stage_link),
      backend_(std::move(backend)),
      kv_(kv) {}

DistributedWorker::DistributedWorker(const ModelWeights& weights, const ParallelShape& shape,
                                     Communicator* world, Communicator* ep_group,
                                     ExpertRanks routing, const KvPoolOptions& kv,
                                     const ForwardLimits& limits)
    : DistributedWorker(
          weights, shape, world, world,
          MakeCpuStageBackend(weights, ep_group, std::move(routing),
                              {.num_layers = weights.spec().layer_end - weights.spec().layer_begin,
                               .num_blocks = kv.num_blocks,
                               .block_size = kv.block_size,
                               .kv_dim = weights.config().kv_dim()},
                              limits),
          kv) {}

PlanLimits DistributedWorker::plan_limits() const {
  return {.vocab_size = weights_.config().vocab_size,
          .dp_size = shape_.ep,
          .max_step_tokens = backend_->limits().max_tokens,
          .max_context = backend_->limits().max_context,
          .num_blocks = kv_.num_blocks,
          .block_size = kv_.block_size};
}

void DistributedWorker::SelectLocal(const StepPlan& plan) {
  local_.Clear();
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SeqEntry& s = plan.seqs[i];
    if (s.dp_rank != shape_.ep_rank()) continue;
    local_.AddSequence(
        s, std::span<const int32_t>(plan.tokens).subspan(s.token_offset, s.num_tokens),
        std::span<const int32_t>(plan.block_tables).subspan(s.block_offset, s.num_blocks));
  }
}

absl::Status DistributedWorker::RunStep(const StepPlan& plan, StepResult* result) {
  ++steps_;
  AddElapsedNanos step_time(&step_ns_);
  // With one data-parallel index every sequence is local (ValidatePlan): no copy.
  if (shape_.ep > 1) SelectLocal(plan);
  const StepPlan& local = shape_.ep > 1 ? local_ : plan;
  const int stage = shape_.stage();
  const bool first = stage == 0, last = stage == shape_.pp - 1;
  const int prev = shape_.WorldRank(stage - 1, shape_.ep_rank());
  const int next = shape_.WorldRank(stage + 1, shape_.ep_rank());
  // The rows whose routing the plan asks for: recorded by every stage for its layers into
  // local_result_ (the same rows on every stage of this DP index), in local plan order.
  const int routed_rows = local_result_.SizeRouting(local, routing_row_entries());
  SplitMicroBatches(local.seqs, shape_.pp, &micro_batches_);
  for (int m = 0; m < static_cast<int>(micro_batches_.size()); ++m) {
    const MicroBatch& mb = micro_batches_[m];
    micro_batch_.assign(local.seqs.begin() + mb.seq_begin, local.seqs.begin() + mb.seq_end);
    for (SeqEntry& s : micro_batch_) s.token_offset -= mb.row0;
    RoutingCapture capture;
    if (routed_rows > 0) capture = RoutingOf(local, mb);
    const size_t bytes = static_cast<size_t>(mb.rows) * backend_->row_bytes();
    if (first) {
      RETURN_IF_ERROR(backend_->Embed(local.tokens.data() + mb.row0, mb.rows, mb.row0));
    } else if (mb.rows > 0) {
      AddElapsedNanos waiting(&link_wait_ns_);
      RETURN_IF_ERROR(stage_link_->Recv(backend_->hidden_rows(mb.row0), bytes, prev, m));
    }
    RETURN_IF_ERROR(backend_->RunLayers(micro_batch_, local.block_tables.data(), mb.row0,
                                        capture.rows.empty() ? nullptr : &capture));
    if (!last && mb.rows > 0) {
      AddElapsedNanos waiting(&link_wait_ns_);
      RETURN_IF_ERROR(stage_link_->Send(backend_->hidden_rows(mb.row0), bytes, next, m));
    }
  }
  if (routed_rows > 0 && shape_.pp > 1) RETURN_IF_ERROR(PassRouting(routed_rows, prev, next));
  if (last) {
    RETURN_IF_ERROR(backend_->Head(local, &local_result_));
    if (shape_.world_rank != 0) RETURN_IF_ERROR(SendResults());
  }
  if (shape_.world_rank == 0) RETURN_IF_ERROR(CollectResults(plan, result));
  return absl::OkStatus();
}

RoutingCapture DistributedWorker::RoutingOf(const StepPlan& local, const MicroBatch& mb) {
  capture_rows_.clear();
  int first = -1;  // the micro-batch's first routed row: its rows are contiguous from there
  for (int i = mb.seq_begin; i < mb.seq_end; ++i) {
    const SeqEntry& s = local.seqs[i];
    const int rows = local_result_.routing_rows[i];
    if (rows > 0 && first < 0) first = local_result_.routing_offset[i];
    for (int j = s.num_tokens - rows; j < s.num_tokens; ++j) {
      capture_rows_.push_back(s.token_offset - mb.row0 + j);
    }
  }
  if (capture_rows_.empty()) return {};
  const size_t at = static_cast<size_t>(first) * routing_row_entries();
  return {.rows = capture_rows_,
          .layers = weights_.config().num_hidden_layers,
          .experts = local_result_.routing_experts.data() + at,
          .weights = local_result_.routing_weights.data() + at};
}

absl::Status DistributedWorker::PassRouting(int rows, int prev, int next) {
  const size_t entries = static_cast<size_t>(rows) * routing_row_entries();
  AddElapsedNanos waiting(&link_wait_ns_);
  if (shape_.stage() > 0) {
    // The layers before this stage's come from the previous stage; this stage's own are
    // already in place.
    routing_in_experts_.resize(entries);
    routing_in_weights_.resize(entries);
    RETURN_IF_ERROR(stage_link_->Recv(routing_in_experts_.data(), entries * sizeof(int32_t), prev,
                                      kRoutingTag));
    RETURN_IF_ERROR(stage_link_->Recv(routing_in_weights_.data(), entries * sizeof(float), prev,
                                      kRoutingTag));
    const size_t row = routing_row_entries();
    const size_t before = static_cast<size_t>(weights_.spec().layer_begin) *
                          weights_.config().num_experts_per_tok;
    for (int r = 0; r < rows; ++r) {
      std::copy_n(&routing_in_experts_[r * row], before, &local_result_.routing_experts[r * row]);
      std::copy_n(&routing_in_weights_[r * row], before, &local_result_.routing_weights[r * row]);
    }
  }
  if (shape_.stage() < shape_.pp - 1) {
    RETURN_IF_ERROR(stage_link_->Send(local_result_.routing_experts.data(),
                                      entries * sizeof(int32_t), next, kRoutingTag));
    RETURN_IF_ERROR(stage_link_->Send(local_result_.routing_weights.data(),
                                      entries * sizeof(float), next, kRoutingTag));
  }
  return absl::OkStatus();
}

absl::Status DistributedWorker::SendResults() {
  const size_t tok_bytes = local_result_.next_tokens.size() * sizeof(int32_t);
  const size_t logit_bytes = local_result_.logits.size() * sizeof(float);
  const size_t routed = local_result_.routing_experts.size();
  const size_t route_bytes = routed * (sizeof(int32_t) + sizeof(float));
  if (tok_bytes + logit_bytes + route_bytes == 0) return absl::OkStatus();  // none ends here
  message_.resize(tok_bytes + logit_bytes + route_bytes);
  // An empty vector's data() may be null, which memcpy may not receive even for 0 bytes.
  char* at = message_.data();
  if (tok_bytes > 0) std::memcpy(at, local_result_.next_tokens.data(), tok_bytes);
  at += tok_bytes;
  if (logit_bytes > 0) std::memcpy(at, local_result_.logits.data(), logit_bytes);
  at += logit_bytes;
  if (routed > 0) {
    std::memcpy(at, local_result_.routing_experts.data(), routed * sizeof(int32_t));
    std::memcpy(at + routed * sizeof(int32_t), local_result_.routing_weights.data(),
                routed * sizeof(float));
  }
  AddElapsedNanos waiting(&link_wait_ns_);
  return world_->Send(message_.data(), message_.size(), 0, kResultTag);
}

absl::Status DistributedWorker::CollectResults(const StepPlan& plan, StepResult* result) {
  if (shape_.ep == 1 && shape_.pp == 1) {
    // One rank: the local plan is the plan, in the same order; no copy.
    std::swap(*result, local_result_);
    return absl::OkStatus();
  }
  const size_t n = plan.seqs.size();
  const int V = weights_.config().vocab_size;
  result->next_tokens.assign(n, -1);
  result->logits_offset.assign(n, 0);
  result->logits_rows.assign(n, 0);
  int32_t total_rows = 0;
  for (size_t i = 0; i < n; ++i) {
    result->logits_offset[i] = total_rows;
    result->logits_rows[i] = ReturnedLogitRows(plan.seqs[i]);
    total_rows += result->logits_rows[i];
  }
  result->logits.resize(static_cast<size_t>(total_rows) * V);
  const size_t RE = routing_row_entries();
  result->SizeRouting(plan, RE);
  for (int dp = 0; dp < shape_.ep; ++dp) {
    const int source = shape_.WorldRank(shape_.pp - 1, dp);
    // The sequences of this DP index, in plan order, and the bytes they produce.
    size_t count = 0, rows = 0, routed = 0;
    for (const SeqEntry& s : plan.seqs) {
      if (s.dp_rank != dp) continue;
      ++count;
      rows += ReturnedLogitRows(s);
      routed += RoutingRows(s);
    }
    const size_t tok_bytes = count * sizeof(int32_t);
    const size_t logit_bytes = rows * V * sizeof(float);
    const int32_t* tokens;
    const float* logits;
    const int32_t* route_experts;
    const float* route_weights;
    if (source == 0) {
      tokens = local_result_.next_tokens.data();
      logits = local_result_.logits.data();
      route_experts = local_result_.routing_experts.data();
      route_weights = local_result_.routing_weights.data();
    } else {
      message_.resize(tok_bytes + logit_bytes + routed * RE * (sizeof(int32_t) + sizeof(float)));
      if (!message_.empty()) {
        AddElapsedNanos waiting(&link_wait_ns_);
        RETURN_IF_ERROR(world_->Recv(message_.data(), message_.size(), source, kResultTag));
      }
      tokens = reinterpret_cast<const int32_t*>(message_.data());
      logits = reinterpret_cast<const float*>(message_.data() + tok_bytes);
      route_experts = reinterpret_cast<const int32_t*>(message_.data() + tok_bytes + logit_bytes);
      route_weights = reinterpret_cast<const float*>(message_.data() + tok_bytes + logit_bytes +
                                                     routed * RE * sizeof(int32_t));
    }
    size_t k = 0, row = 0, route_row = 0;
    for (size_t i = 0; i < n; ++i) {
      if (plan.seqs[i].dp_rank != dp) continue;
      result->next_tokens[i] = tokens[k++];
      if (const size_t r = result->routing_rows[i]; r > 0) {
        const size_t to = static_cast<size_t>(result->routing_offset[i]) * RE;
        std::copy_n(route_experts + route_row * RE, r * RE, &result->routing_experts[to]);
        std::copy_n(route_weights + route_row * RE, r * RE, &result->routing_weights[to]);
        route_row += r;
      }
      const size_t r = result->logits_rows[i];
      if (r == 0) continue;  // no logits asked for (its offset may be the end of the buffer)
      std::memcpy(result->logits.data() + static_cast<size_t>(result->logits_offset[i]) * V,
                  logits + row * V, r * V * sizeof(float));
      row += r;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RankStatus>> DistributedWorker::GatherStatus() {
  // Fixed-size record per rank: a header; per (layer, expert) of the whole model the
  // routed-token count and whether this rank holds the expert; per world rank the bytes the
  // expert dispatcher sent there.
  const ModelConfig& cfg = weights_.config();
  const int E = cfg.num_local_experts;
  const size_t LE = static_cast<size_t>(cfg.num_hidden_layers) * E;
  const int world = shape_.ep * shape_.pp;
  constexpr size_t kHeader = 13;
  const size_t tokens_at = kHeader, held_at = kHeader + LE, sent_at = kHeader + 2 * LE;
  const size_t words = sent_at + world;
  std::vector<int64_t> mine(words, 0);
  const ShardSpec& spec = weights_.spec();
  const CommMeter& dispatch = backend_->dispatch_meter();
  const int64_t wait_ns = link_wait_ns_ + dispatch.wait_ns;
  mine[0] = shape_.world_rank;
  mine[1] = shape_.stage();
  mine[2] = shape_.ep_rank();
  mine[3] = spec.layer_begin;
  mine[4] = spec.layer_end;
  mine[5] = static_cast<int64_t>(weights_.resident_bytes());
  mine[6] = static_cast<int64_t>(backend_->kv_bytes());
  mine[7] = steps_;
  mine[8] = (spec.has_embedding ? 1 : 0) | (spec.has_head ? 2 : 0);
  mine[9] = std::max<int64_t>(0, step_ns_ - wait_ns);
  mine[10] = wait_ns;
  mine[11] = backend_->experts_prepared();
  mine[12] = backend_->experts_active();
  const auto& counts = backend_->expert_token_counts();
  for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
    for (int e = 0; e < E; ++e) mine[tokens_at + l * E + e] = counts[l][e];
    for (int e : spec.local_experts[l - spec.layer_begin]) mine[held_at + l * E + e] = 1;
  }
  // The dispatcher's group is this stage's EP ranks: group rank p is world rank (stage, p).
  for (size_t p = 0; p < dispatch.sent_bytes.size(); ++p) {
    mine[sent_at + shape_.WorldRank(shape_.stage(), static_cast<int>(p))] =
        static_cast<int64_t>(dispatch.sent_bytes[p]);
  }
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
    st.has_embedding = (rec[8] & 1) != 0;
    st.has_head = (rec[8] & 2) != 0;
    st.compute_seconds = static_cast<double>(rec[9]) * 1e-9;
    st.wait_seconds = static_cast<double>(rec[10]) * 1e-9;
    st.experts_prepared = rec[11];
    st.experts_active = rec[12];
    for (int l = st.layer_begin; l < st.layer_end; ++l) {
      std::vector<int> held;
      std::vector<int64_t> tokens(E);
      for (int e = 0; e < E; ++e) {
        tokens[e] = rec[tokens_at + l * E + e];
        if (rec[held_at + l * E + e] != 0) held.push_back(e);
      }
      st.experts.push_back(std::move(held));
      st.expert_tokens.push_back(std::move(tokens));
    }
    st.dispatch_bytes_sent.assign(rec + sent_at, rec + sent_at + world);
    out.push_back(std::move(st));
  }
  return out;
}

absl::StatusOr<std::vector<RankStatus>> DistributedExecutor::CollectStatus() {
  ProgressMeter::Scope operation(worker_->progress());
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
  AdoptStepThreads();  // the serving scheduler's thread runs the steps of rank 0
  RETURN_IF_ERROR(ValidatePlan(plan, worker_->plan_limits()));
  if (!records_routing()) {
    for (const SeqEntry& s : plan.seqs) {
      if (s.routing != RoutingMode::kNone) {
        return absl::UnimplementedError(absl::StrCat(
            "sequence ", s.seq_id, ": routing (return_routing, switchyard trace) is not "
            "recorded by this job's stage backend (the CUDA backend) yet; run on --device cpu"));
      }
    }
  }
  ProgressMeter::Scope operation(worker_->progress());
  RETURN_IF_ERROR(BroadcastPlan(kStep, plan));
  return worker_->RunStep(plan, result);
}

absl::Status DistributedExecutor::Heartbeat() {
  ProgressMeter::Scope operation(worker_->progress());
  RETURN_IF_ERROR(BroadcastPlan(kHeartbeat, StepPlan()));
  return worker_->world()->Barrier();
}

absl::Status DistributedExecutor::Shutdown() { return BroadcastPlan(kShutdown, StepPlan()); }

absl::Status DistributedWorker::PrepareExperts(int64_t generation, const ExpertRanks& routing) {
  if (expert_weights_ == nullptr) {
    return absl::FailedPreconditionError("this worker was given no checkpoint to move experts");
  }
  return backend_->PrepareExperts(generation, routing, expert_weights_, expert_ckpt_);
}

absl::Status DistributedWorker::SwitchExperts(int64_t generation) {
  return backend_->SwitchExperts(generation);
}

absl::Status DistributedExecutor::PrepareExperts(int64_t generation, const ExpertRanks& routing) {
  // Checked here, before any rank sees it: a placement a worker refused would end the job.
  if (generation <= 0 || generation > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("expert placement generation ", generation,
                                                   " outside [1, 2^32)"));
  }
  const int ep = worker_->shape().ep;
  for (size_t l = 0; l < routing.size(); ++l) {
    if (routing[l].size() != routing[0].size()) {
      return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " has ",
                                                     routing[l].size(), " experts, layer 0 ",
                                                     routing[0].size()));
    }
    for (size_t e = 0; e < routing[l].size(); ++e) {
      std::vector<int> ranks = routing[l][e];
      std::sort(ranks.begin(), ranks.end());
      if (ranks.empty() || ranks.front() < 0 || ranks.back() >= ep ||
          std::adjacent_find(ranks.begin(), ranks.end()) != ranks.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "expert placement: layer ", l, " expert ", e,
            " needs distinct EP ranks in [0, ", ep, "), at least one"));
      }
    }
  }
  ProgressMeter::Scope operation(worker_->progress());
  const std::vector<int32_t> words = PackRouting(routing);
  PlanHeader header{kPrepareExperts, static_cast<uint32_t>(generation),
                    static_cast<uint32_t>(words.size()), 0};
  Communicator* world = worker_->world();
  RETURN_IF_ERROR(world->Broadcast(&header, sizeof(header), 0));
  RETURN_IF_ERROR(world->Broadcast(const_cast<int32_t*>(words.data()),
                                   words.size() * sizeof(int32_t), 0));
  return worker_->PrepareExperts(generation, routing);
}

absl::Status DistributedExecutor::SwitchExperts(int64_t generation) {
  if (generation <= 0 || generation > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("expert placement generation ", generation,
                                                   " outside [1, 2^32)"));
  }
  ProgressMeter::Scope operation(worker_->progress());
  PlanHeader header{kSwitchExperts, static_cast<uint32_t>(generation), 0, 0};
  RETURN_IF_ERROR(worker_->world()->Broadcast(&header, sizeof(header), 0));
  return worker_->SwitchExperts(generation);
}

absl::Status RunWorkerLoop(DistributedWorker* worker) {
  Communicator* world = worker->world();
  StepPlan plan;
  std::vector<char> buffer;
  while (true) {
    PlanHeader header;
    RETURN_IF_ERROR(world->Broadcast(&header, sizeof(header), 0));
    if (header.command == kShutdown) return absl::OkStatus();
    // From the plan's arrival to the end of this rank's part: one operation.
    ProgressMeter::Scope operation(worker->progress());
    if (header.command == kHeartbeat) {
      RETURN_IF_ERROR(world->Barrier());
      continue;
    }
    if (header.command == kStatus) {
      RETURN_IF_ERROR(worker->GatherStatus().status());
      continue;
    }
    if (header.command == kPrepareExperts) {
      std::vector<int32_t> words(header.num_tokens);
      RETURN_IF_ERROR(world->Broadcast(words.data(), words.size() * sizeof(int32_t), 0));
      ASSIGN_OR_RETURN(ExpertRanks routing, UnpackRouting(words));
      RETURN_IF_ERROR(worker->PrepareExperts(header.num_seqs, routing));
      continue;
    }
    if (header.command == kSwitchExperts) {
      RETURN_IF_ERROR(worker->SwitchExperts(header.num_seqs));
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
