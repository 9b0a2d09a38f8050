#include "cli/commands.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/run_flags.h"
#include "common/log.h"
#include "common/npy.h"
#include "common/progress.h"
#include "coordinator/finish_reason.h"
#include "coordinator/model_session.h"
#include "coordinator/perplexity.h"
#include "coordinator/sequence_runner.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;


struct GenerateArgs {
  RunFlags run;
  std::string prompt;
  int max_tokens = 64;
  float temperature = 0.0f, top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool json = false;
};

int RunGenerate(const GenerateArgs& a) {
  auto session = ModelSession::Open(ToSessionOptions(a.run, !a.json));
  if (!session.ok()) return Fail(session.status());
  ModelSession& s = **session;
  if (!s.is_coordinator()) return WorkerMain(s);
  if (s.tokenizer == nullptr) {
    return Finish(s, Fail(absl::FailedPreconditionError(
                         "generate needs tokenizer.model beside the checkpoint to encode "
                         "--prompt (score takes token ids)")));
  }
  SequenceRunner runner(s.executor.get(), s.allocator(0), s.config);
  std::vector<int32_t> prompt = s.tokenizer->Encode(a.prompt, /*add_bos=*/true);
  IncrementalDetokenizer stream(s.tokenizer.get(), prompt);
  GenerateOptions opts{.max_tokens = a.max_tokens,
                       .sampling = {.temperature = a.temperature,
                                    .top_k = a.top_k,
                                    .top_p = a.top_p,
                                    .seed = a.seed}};
  auto start = Clock::now();
  auto out = runner.Generate(prompt, opts, [&](int32_t id) {
    if (a.json || id == s.config.eos_token_id) return;
    std::cout << stream.Push(id) << std::flush;
  });
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (!out.ok()) return Finish(s, Fail(out.status()));
  std::string text = s.tokenizer->DecodeCompletion(prompt, out->tokens);
  if (a.json) {
    json j = {{"prompt_ids", prompt},
              {"token_ids", out->tokens},
              {"text", text},
              {"finish_reason", FinishReasonName(out->finish)},
              {"seconds", secs}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << stream.Flush() << "\n";
    spdlog::info("{} tokens, {}, {:.1f} tokens/s", out->tokens.size(),
                 FinishReasonName(out->finish), out->tokens.size() / secs);
  }
  return Finish(s, 0);
}

int RunPerplexity(const RunFlags& f, const std::string& file, bool as_json) {
  std::ifstream in(file);
  if (!in) return Fail(absl::NotFoundError("cannot read " + file));
  std::stringstream ss;
  ss << in.rdbuf();
  auto session = ModelSession::Open(ToSessionOptions(f, !as_json));
  if (!session.ok()) return Fail(session.status());
  ModelSession& s = **session;
  if (!s.is_coordinator()) return WorkerMain(s);
  if (s.tokenizer == nullptr) {
    return Finish(s, Fail(absl::FailedPreconditionError(
                         "perplexity needs tokenizer.model beside the checkpoint to encode "
                         "--file (score takes token ids)")));
  }
  std::vector<int32_t> tokens = s.tokenizer->Encode(ss.str(), /*add_bos=*/true);
  if (tokens.size() < 2) {
    return Finish(s, Fail(absl::InvalidArgumentError(file + " has no text to score")));
  }
  SequenceRunner runner(s.executor.get(), s.allocator(0), s.config);
  PerplexityAccumulator acc(tokens, s.config.vocab_size);
  auto st = runner.Score(tokens, [&](int first, int rows, const float* logits) {
    acc.Add(first, rows, logits);
  });
  if (!st.ok()) return Finish(s, Fail(st));
  if (as_json) {
    std::cout << json{{"tokens", tokens.size()}, {"scored_tokens", acc.count()},
                      {"perplexity", acc.perplexity()}}.dump()
              << "\n";
  } else {
    std::printf("tokens: %zu\nscored tokens: %d\nperplexity: %.4f\n", tokens.size(),
                acc.count(), acc.perplexity());
  }
  return Finish(s, 0);
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece :
       absl::StrSplit(text, absl::ByAnyChar(" ,\t\n"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError("--tokens: '" + std::string(piece) +
                                        "' is not an integer");
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--tokens: no token ids given");
  return ids;
}

namespace {

int RunScore(const RunFlags& f, const std::string& tokens_text, const std::string& out) {
  auto ids = ParseTokenList(tokens_text);
  if (!ids.ok()) return Fail(ids.status());
  auto session = ModelSession::Open(ToSessionOptions(f, true));
  if (!session.ok()) return Fail(session.status());
  ModelSession& s = **session;
  if (!s.is_coordinator()) return WorkerMain(s);
  const int V = s.config.vocab_size;
  for (int32_t id : *ids) {
    if (id < 0 || id >= V) {
      return Finish(s, Fail(absl::InvalidArgumentError("--tokens: id " + std::to_string(id) +
                                                       " outside [0, " + std::to_string(V) +
                                                       ")")));
    }
  }
  std::vector<float> logits(ids->size() * static_cast<size_t>(V));
  SequenceRunner runner(s.executor.get(), s.allocator(0), s.config);
  auto st = runner.Score(*ids, [&](int first, int rows, const float* l) {
    std::copy(l, l + static_cast<size_t>(rows) * V,
              logits.begin() + static_cast<size_t>(first) * V);
  });
  if (st.ok()) st = WriteNpyF32(out, logits.data(), {static_cast<int64_t>(ids->size()), V});
  if (!st.ok()) return Finish(s, Fail(st));
  spdlog::info("wrote logits [{}, {}] to {}", ids->size(), V, out);
  return Finish(s, 0);
}

int RunInspect(const std::string& model, bool as_json) {
  auto cfg = LoadModelConfig(model + "/config.json");
  if (!cfg.ok()) return Fail(cfg.status());
  auto ckpt = SafetensorsCheckpoint::Open(model);
  if (!ckpt.ok()) return Fail(ckpt.status());
  const ModelConfig& c = *cfg;
  // Bytes as stored in the checkpoint, per tensor group.
  auto bytes_of = [&](const std::string& name) -> uint64_t {
    auto t = (*ckpt)->Get(name);
    return t.ok() ? t->nbytes : 0;
  };
  uint64_t expert_bytes = 0;
  for (const char* w : {"w1", "w2", "w3"}) {
    expert_bytes += bytes_of(std::string("model.layers.0.block_sparse_moe.experts.0.") + w + ".weight");
  }
  uint64_t total = 0;
  for (const std::string& n : (*ckpt)->Names()) total += bytes_of(n);
  uint64_t layer = 0;
  const std::string prefix = "model.layers.0.";
  for (const std::string& n : (*ckpt)->Names()) {
    if (n.rfind(prefix, 0) == 0) layer += bytes_of(n);
  }
  nlohmann::ordered_json j = {{"model_type", c.model_type},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim},
            {"num_local_experts", c.num_local_experts},
            {"num_experts_per_tok", c.num_experts_per_tok},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_position_embeddings},
            {"rms_norm_eps", c.rms_norm_eps},
            {"rope_theta", c.rope_theta},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"bos_token_id", c.bos_token_id},
            {"eos_token_id", c.eos_token_id},
            {"total_params", c.TotalParams()},
            {"active_params_per_token", c.ActiveParamsPerToken()},
            {"bytes_per_layer", layer},
            {"bytes_per_expert", expert_bytes},
            {"bytes_total", total}};
  if (as_json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  for (auto& [k, v] : j.items()) {
    std::string val = v.is_number_float() ? absl::StrCat(v.get<double>()) : v.dump();
    if (k.rfind("bytes", 0) == 0) val += " (" + ByteProgress::FormatBytes(v.get<double>()) + ")";
    std::printf("%-26s %s\n", k.c_str(), val.c_str());
  }
  return 0;
}

}  // namespace

void RegisterGenerate(CLI::App& app, Action* action) {
  static GenerateArgs args;  // CLI11 binds options to storage that outlives parsing
  GenerateArgs* a = &args;
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  AddRunFlags(cmd, &a->run);
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("--max-tokens", a->max_tokens, "Most tokens to generate")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", a->temperature, "Sampling temperature; 0 is greedy")
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass in (0, 1]")
      ->check(CLI::Range(1e-6f, 1.0f));
  cmd->add_option("--seed", a->seed, "Sampling seed");
  cmd->add_flag("--json", a->json, "Print one JSON object with token ids and text");
  cmd->callback([a, action] { *action = [a] { return RunGenerate(*a); }; });
}

void RegisterPerplexity(CLI::App& app, Action* action) {
  static RunFlags flags;
  static std::string file;
  static bool as_json = false;
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file (one window)");
  AddRunFlags(cmd, &flags);
  cmd->add_option("--file", file, "Text file")->required()->check(CLI::ExistingFile);
  cmd->add_flag("--json", as_json, "Print JSON");
  cmd->callback([action] { *action = [] { return RunPerplexity(flags, file, as_json); }; });
}

void RegisterScore(CLI::App& app, Action* action) {
  static RunFlags flags;
  static std::string tokens, out;
  CLI::App* cmd = app.add_subcommand("score", "Write the logits of every position as .npy");
  AddRunFlags(cmd, &flags);
  cmd->add_option("--tokens", tokens, "Token ids, space or comma separated")->required();
  cmd->add_option("--out", out, "Output .npy file (float32 [T, vocab])")->required();
  cmd->callback([action] { *action = [] { return RunScore(flags, tokens, out); }; });
}

void RegisterInspect(CLI::App& app, Action* action) {
  static std::string model;
  static bool as_json = false;
  CLI::App* cmd = app.add_subcommand("inspect", "Show the config, parameter counts and sizes");
  AddModelOption(cmd, &model);
  cmd->add_flag("--json", as_json, "Print JSON");
  cmd->callback([action] { *action = [] { return RunInspect(model, as_json); }; });
}

}  // namespace switchyard::cli
