#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"

namespace switchyard {
namespace {
using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

struct Scheduler::Sequence {
  RequestId id = 0;
  GenerateRequest req;
  std::shared_ptr<RequestSink> sink;
  int dp = 0;
  std::vector<int32_t> blocks;
  int prefilled = 0;  // prompt tokens already in the KV cache
  std::vector<int32_t> generated;
  std::optional<IncrementalDetokenizer> detok;
  std::string text;    // generated text so far (truncated at a stop string)
  size_t emitted = 0;  // bytes of `text` already sent
  bool done = false;
  // For the observer: when Submit took it, when it was admitted and its last token came.
  Clock::time_point submitted, admitted, first_token, last_token;

  int prompt_len() const { return static_cast<int>(req.prompt_ids.size()); }
  bool prefilling() const { return prefilled < prompt_len(); }
};

Scheduler::Scheduler(StepExecutor* executor, const Tokenizer* tokenizer,
                     const ModelConfig& config, const SchedulerOptions& options,
                     std::vector<BlockAllocator*> allocators,
                     std::function<absl::Status()> heartbeat)
    : executor_(executor),
      tokenizer_(tokenizer),
      config_(config),
      options_(options),
      allocators_(std::move(allocators)),
      heartbeat_(std::move(heartbeat)) {
  for (BlockAllocator* a : allocators_) {
    stats_.free_blocks.push_back(a->free_blocks());
    stats_.total_blocks.push_back(a->num_blocks());
  }
}

Scheduler::~Scheduler() { Stop(); }

Clock::time_point Scheduler::Now() const {
  return options_.clock != nullptr ? options_.clock->Now() : Clock::now();
}

void Scheduler::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

absl::StatusOr<RequestId> Scheduler::Submit(GenerateRequest request,
                                            std::shared_ptr<RequestSink> sink) {
  const int prompt = static_cast<int>(request.prompt_ids.size());
  if (prompt == 0) return absl::InvalidArgumentError("prompt is empty");
  if (request.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be at least 1");
  if (prompt + request.max_tokens > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: prompt (", prompt, " tokens) + max_tokens (", request.max_tokens,
        ") exceeds the model's context of ", config_.max_position_embeddings));
  }
  const int need = allocators_[0]->BlocksFor(prompt + request.max_tokens - 1);
  if (need > allocators_[0]->num_blocks()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: the request needs ", need, " KV blocks; a data-parallel rank has ",
        allocators_[0]->num_blocks()));
  }
  if (static_cast<int>(request.stop.size()) > options_.max_stop_strings) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: at most ", options_.max_stop_strings, " stop strings"));
  }
  for (const std::string& s : request.stop) {
    if (s.empty() || static_cast<int>(s.size()) > options_.max_stop_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop: stop strings must be 1 to ", options_.max_stop_length, " bytes"));
    }
  }
  if (request.logprobs < -1 || request.logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "logprobs: at most ", kMaxTopLogprobs, " alternatives, got ", request.logprobs));
  }
  if (request.return_routing && !executor_->records_routing()) {
    return absl::FailedPreconditionError(
        "return_routing: this server's executor (--device cuda) does not record routing yet; "
        "serve on --device cpu for routing");
  }
  auto seq = std::make_unique<Sequence>();
  seq->submitted = Now();
  seq->req = std::move(request);
  seq->sink = std::move(sink);
  if (tokenizer_ != nullptr) seq->detok.emplace(tokenizer_, seq->req.prompt_ids);  // else ids only
  std::lock_guard<std::mutex> lock(mu_);
  if (!failure_.ok()) {
    return absl::UnavailableError(absl::StrCat("the cluster failed: ", failure_.message()));
  }
  if (draining_ || stopping_) return absl::UnavailableError("server is draining");
  // Requests that free running slots will take at the next step are not queued: refuse only
  // when the queue is full beyond them.
  const int free_slots = std::max(0, options_.max_running - stats_.running);
  if (static_cast<int>(waiting_.size()) >= options_.max_queue + free_slots) {
    return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", options_.max_queue,
                                                     " waiting, ", stats_.running,
                                                     " running); retry later"));
  }
  seq->id = next_id_++;
  const RequestId id = seq->id;
  waiting_.push_back(std::move(seq));
  stats_.waiting = static_cast<int>(waiting_.size());
  cv_.notify_all();
  return id;
}

void Scheduler::Cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.push_back(id);
  cv_.notify_all();
}

void Scheduler::Drain() {
  std::unique_lock<std::mutex> lock(mu_);
  draining_ = true;
  stats_.draining = true;
  cv_.notify_all();
  cv_.wait(lock, [this] {
    return (waiting_.empty() && stats_.running == 0) || !failure_.ok() || !thread_.joinable();
  });
}

void Scheduler::Stop(absl::Status reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) stop_reason_ = std::move(reason);
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::Status Scheduler::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Scheduler::Finish(Sequence* s, FinishReason reason, absl::Status error, RequestEvent ev) {
  allocators_[s->dp]->Free(&s->blocks);
  s->done = true;
  ev.finished = true;
  ev.finish_reason = reason;
  ev.error = std::move(error);
  ev.prompt_tokens = s->prompt_len();
  ev.completion_tokens = static_cast<int>(s->generated.size());
  if (ev.error.ok() && reason != FinishReason::kCancelled) ev.text = s->text.substr(s->emitted);
  if (options_.observer != nullptr) {
    const Clock::time_point none{};
    options_.observer->OnRequestEnd(
        {.queue_seconds = s->admitted == none ? -1 : Seconds(s->admitted - s->submitted),
         .first_token_seconds = s->generated.empty() ? -1 : Seconds(s->first_token - s->submitted),
         .total_seconds = Seconds(Now() - s->submitted),
         .finish_reason = reason,
         .failed = !ev.error.ok(),
         .prompt_tokens = ev.prompt_tokens,
         .completion_tokens = ev.completion_tokens});
  }
  s->sink->OnEvent(ev);
}

void Scheduler::FailAll(const absl::Status& error) {
  std::deque<std::unique_ptr<Sequence>> waiting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = error;
    stats_.failed = true;
    waiting.swap(waiting_);
  }
  const absl::Status unavailable =
      absl::UnavailableError(absl::StrCat("the cluster failed: ", error.message()));
  for (auto& s : running_) Finish(s.get(), FinishReason::kCancelled, unavailable);
  for (auto& s : waiting) Finish(s.get(), FinishReason::kCancelled, unavailable);
  running_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.running = 0;
  stats_.waiting = 0;
  cv_.notify_all();
}

bool Scheduler::TakeWork(std::vector<std::unique_ptr<Sequence>>* admitted, bool may_wait) {
  std::vector<RequestId> cancelled;
  std::vector<std::unique_ptr<Sequence>> dropped;  // cancelled while waiting
  bool stopping;
  absl::Status stop_reason;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto has_work = [this] {
      return !waiting_.empty() || !cancelled_.empty() || stopping_ || !running_.empty();
    };
    if (!has_work()) {
      if (may_wait) cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.heartbeat), has_work);
      if (!has_work()) {
        lock.unlock();
        if (heartbeat_) {
          absl::Status st = heartbeat_();
          if (!st.ok()) {
            FailAll(st);
            return false;
          }
        }
        return true;
      }
    }
    stopping = stopping_;
    stop_reason = stop_reason_;
    cancelled.swap(cancelled_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      const bool cancel =
          stopping || std::find(cancelled.begin(), cancelled.end(), (*it)->id) != cancelled.end();
      if (cancel) {
        dropped.push_back(std::move(*it));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    // Admission: FCFS while a data-parallel pool can hold the whole request.
    while (!stopping && !waiting_.empty() &&
           static_cast<int>(running_.size() + admitted->size()) < options_.max_running) {
      Sequence* s = waiting_.front().get();
      const int tokens = s->prompt_len() + s->req.max_tokens - 1;
      int best = -1;
      for (size_t dp = 0; dp < allocators_.size(); ++dp) {
        if (allocators_[dp]->free_blocks() >= allocators_[dp]->BlocksFor(tokens) &&
            (best < 0 || allocators_[dp]->free_blocks() > allocators_[best]->free_blocks())) {
          best = static_cast<int>(dp);
        }
      }
      if (best < 0) break;  // wait for blocks to free up
      s->dp = best;
      s->admitted = Now();
      allocators_[best]->Grow(&s->blocks, tokens);
      admitted->push_back(std::move(waiting_.front()));
      waiting_.pop_front();
    }
    stats_.waiting = static_cast<int>(waiting_.size());
    // Admitted now, before they reach running_ (Submit counts free running slots).
    stats_.running = static_cast<int>(running_.size() + admitted->size());
  }
  // A client's own cancel ends as cancelled; a stop, with its reason when it has one.
  auto is_cancelled = [&cancelled](const Sequence* s) {
    return std::find(cancelled.begin(), cancelled.end(), s->id) != cancelled.end();
  };
  for (auto& s : dropped) {
    Finish(s.get(), FinishReason::kCancelled, is_cancelled(s.get()) ? absl::OkStatus() : stop_reason);
  }
  for (auto& s : running_) {
    if (is_cancelled(s.get())) {
      Finish(s.get(), FinishReason::kCancelled);
    } else if (stopping) {
      Finish(s.get(), FinishReason::kCancelled, stop_reason);
    }
  }
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->done; });
  if (stopping) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.running = 0;
    cv_.notify_all();
    return false;
  }
  return true;
}

void Scheduler::BuildPlan() {
  plan_.Clear();
  plan_seqs_.clear();
  std::vector<int> budget(allocators_.size(), options_.step_token_budget);
  // Decode tokens first, so a long prompt never stalls running streams.
  for (auto& sp : running_) {
    Sequence* s = sp.get();
    if (s->prefilling() || budget[s->dp] < 1) continue;
    --budget[s->dp];
    const int32_t token = s->generated.back();
    plan_.AddSequence({.seq_id = s->id,
                       .dp_rank = s->dp,
                       .start_pos = s->prompt_len() + static_cast<int>(s->generated.size()) - 1,
                       // The sampled row's logits come back when the request wants logprobs.
                       .logits = s->req.logprobs >= 0 ? LogitsMode::kLast : LogitsMode::kNone,
                       .sample = true,
                       .routing = s->req.return_routing ? RoutingMode::kLast : RoutingMode::kNone,
                       .sampling = s->req.sampling,
                       .sample_index = s->generated.size()},
                      std::span<const int32_t>(&token, 1), s->blocks);
    plan_seqs_.push_back(s);
  }
  // Then prompt chunks, oldest first.
  for (auto& sp : running_) {
    Sequence* s = sp.get();
    if (!s->prefilling()) continue;
    const int n = std::min({options_.prefill_chunk, s->prompt_len() - s->prefilled, budget[s->dp]});
    if (n <= 0) continue;
    budget[s->dp] -= n;
    const bool last = s->prefilled + n == s->prompt_len();
    plan_.AddSequence({.seq_id = s->id,
                       .dp_rank = s->dp,
                       .start_pos = s->prefilled,
                       .logits = last && s->req.logprobs >= 0 ? LogitsMode::kLast
                                                              : LogitsMode::kNone,
                       .sample = last,
                       .routing = last && s->req.return_routing ? RoutingMode::kLast
                                                                : RoutingMode::kNone,
                       .sampling = s->req.sampling,
                       .sample_index = 0},
                      std::span<const int32_t>(s->req.prompt_ids).subspan(s->prefilled, n),
                      s->blocks);
    plan_seqs_.push_back(s);
  }
}

namespace {
// Length of the longest suffix of `text` that is a proper prefix of a stop string: text that
// might still become a stop match and must not be streamed yet.
size_t HeldBack(const std::string& text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops) {
    for (size_t n = std::min(stop.size() - 1, text.size()); n > held; --n) {
      if (text.compare(text.size() - n, n, stop, 0, n) == 0) {
        held = n;
        break;
      }
    }
  }
  return held;
}
}  // namespace

std::optional<FinishReason> Scheduler::Append(Sequence* s, int32_t token, RequestEvent* ev) {
  const Clock::time_point now = Now();
  if (s->generated.empty()) {
    s->first_token = now;
  } else if (options_.observer != nullptr) {
    options_.observer->OnTokenGap(Seconds(now - s->last_token));
  }
  s->last_token = now;
  s->generated.push_back(token);
  ev->token_ids.push_back(token);
  if (s->req.stop_at_eos && token == config_.eos_token_id) {
    if (s->detok) s->text += s->detok->Flush();
    return FinishReason::kEos;
  }
  const size_t before = s->text.size();
  if (s->detok) s->text += s->detok->Push(token);
  const bool at_limit = static_cast<int>(s->generated.size()) >= s->req.max_tokens;
  if (at_limit && s->detok) s->text += s->detok->Flush();
  // A stop string can only end inside the new text: search from where it could start.
  const size_t from = before >= static_cast<size_t>(options_.max_stop_length)
                          ? before - options_.max_stop_length
                          : 0;
  size_t match = std::string::npos;
  for (const std::string& stop : s->req.stop) match = std::min(match, s->text.find(stop, from));
  if (match != std::string::npos) {
    s->text.resize(std::max(match, s->emitted));
    return FinishReason::kStop;
  }
  if (at_limit) return FinishReason::kLength;
  const size_t ready = s->text.size() - HeldBack(s->text, s->req.stop);
  if (ready > s->emitted) {
    ev->text = s->text.substr(s->emitted, ready - s->emitted);
    s->emitted = ready;
  }
  return std::nullopt;
}

void Scheduler::ApplyResult() {
  for (size_t i = 0; i < plan_.seqs.size(); ++i) {
    Sequence* s = plan_seqs_[i];
    const SeqEntry& e = plan_.seqs[i];
    if (s->prefilling()) s->prefilled += e.num_tokens;
    if (!e.sample) continue;
    RequestEvent ev;
    const int32_t token = result_.next_tokens[i];
    if (s->req.logprobs >= 0 && result_.logits_rows[i] > 0) {
      // The model's distribution at the sampled row (the executor returned it: kLast).
      GeneratedLogprob& lp = ev.logprobs.emplace_back();
      lp.logprob = TokenLogprobs(result_.SeqLogits(i, config_.vocab_size).data(),
                                 config_.vocab_size, token, s->req.logprobs, &lp.top,
                                 &logprob_scratch_);
    }
    if (s->req.return_routing && result_.routing_rows[i] > 0) {
      const int row = config_.num_hidden_layers * config_.num_experts_per_tok;
      const auto experts = result_.SeqRoutingExperts(static_cast<int>(i), row);
      const auto weights = result_.SeqRoutingWeights(static_cast<int>(i), row);
      ev.routing.push_back({.top_k = config_.num_experts_per_tok,
                            .experts = {experts.begin(), experts.end()},
                            .weights = {weights.begin(), weights.end()}});
    }
    std::optional<FinishReason> finish = Append(s, token, &ev);
    if (finish.has_value()) {
      Finish(s, *finish, absl::OkStatus(), std::move(ev));
    } else {
      ev.prompt_tokens = s->prompt_len();
      ev.completion_tokens = static_cast<int>(s->generated.size());
      s->sink->OnEvent(ev);
    }
  }
}

void Scheduler::PublishStats(int64_t prompt_tokens, int64_t generated_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.running = static_cast<int>(running_.size());
  stats_.prompt_tokens += prompt_tokens;
  stats_.generated_tokens += generated_tokens;
  for (size_t dp = 0; dp < allocators_.size(); ++dp) {
    stats_.free_blocks[dp] = allocators_[dp]->free_blocks();
  }
  cv_.notify_all();
}

void Scheduler::Loop() {
  last_heartbeat_ = Now();
  while (Iterate(/*may_wait=*/true) != Progress::kStopped) {
  }
  PublishStats(0, 0);
}

Scheduler::Progress Scheduler::RunOnce() {
  if (last_heartbeat_ == Clock::time_point{}) last_heartbeat_ = Now();
  const Progress p = Iterate(/*may_wait=*/false);
  if (p == Progress::kStopped) PublishStats(0, 0);
  return p;
}

Scheduler::Progress Scheduler::Iterate(bool may_wait) {
  const auto interval = absl::ToChronoMilliseconds(options_.heartbeat);
  // While busy, the periodic round still runs between steps (status stays fresh and a hung
  // rank is noticed even when no step is waiting on it).
  if (heartbeat_ && !running_.empty() && Now() - last_heartbeat_ >= interval) {
    last_heartbeat_ = Now();
    absl::Status hb = heartbeat_();
    if (!hb.ok()) {
      FailAll(hb);
      return Progress::kStopped;
    }
  }
  admitted_.clear();
  const bool go_on = TakeWork(&admitted_, may_wait);
  for (auto& s : admitted_) running_.push_back(std::move(s));
  if (!go_on) return Progress::kStopped;
  if (running_.empty()) {
    PublishStats(0, 0);
    return Progress::kIdle;
  }
  BuildPlan();
  const Clock::time_point step_start = Now();
  absl::Status st = executor_->Execute(plan_, &result_);
  if (!st.ok()) {
    FailAll(st);
    return Progress::kStopped;
  }
  const double step_seconds = Seconds(Now() - step_start);
  int64_t prompt = 0, generated = 0;
  for (size_t i = 0; i < plan_.seqs.size(); ++i) {
    (plan_seqs_[i]->prefilling() ? prompt : generated) += plan_.seqs[i].num_tokens;
  }
  if (options_.observer != nullptr) {
    options_.observer->OnStep({.seconds = step_seconds,
                               .prefill_tokens = static_cast<int>(prompt),
                               .decode_tokens = static_cast<int>(generated)});
  }
  ApplyResult();
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->done; });
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
  }
  PublishStats(prompt, generated);
  if (options_.after_step) {
    if (absl::Status after = options_.after_step(); !after.ok()) {
      FailAll(after);
      return Progress::kStopped;
    }
  }
  return Progress::kStepped;
}

}  // namespace switchyard
