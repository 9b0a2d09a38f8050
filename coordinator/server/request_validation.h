// Validation of generation requests from clients (both the Switchyard and the KServe API)
// into the scheduler's GenerateRequest.
//
//   GenerationParams p{.text = "The jury said", .max_tokens = 32};
//   ASSIGN_OR_RETURN(GenerateRequest req, BuildGenerateRequest(p, ctx));
//
// Every refusal is kInvalidArgument whose message starts with the field it concerns
// ("top_p: must be in (0, 1], got 1.5"), so clients can tell what to fix.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/generation_queue.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace switchyard {

// A generation request as a client sent it, before validation. Unset optionals take the
// defaults documented in proto/switchyard/v1/switchyard.proto.
struct GenerationParams {
  std::string model;                // empty: the served model
  std::optional<std::string> text;  // exactly one of text and token_ids
  // The name the client's API gives the text prompt, for refusals ("text" in switchyard.v1,
  // "text_input" in KServe v2); a string with static storage.
  std::string_view text_field = "text";
  std::vector<int32_t> token_ids;
  std::string_view token_ids_field = "token_ids";  // as text_field, for token-id prompts
  std::optional<int64_t> max_tokens;  // default ValidationLimits::default_max_tokens
  // When set and max_tokens is not: this many, or what the context leaves after the prompt
  // when that is fewer (the OpenAI API's default).
  std::optional<int64_t> default_max_tokens;
  std::optional<double> temperature;  // default 0 (greedy)
  std::optional<int64_t> top_k;       // default 0 (off)
  std::optional<double> top_p;        // default 1 (off)
  std::optional<uint64_t> seed;       // default 0
  std::vector<std::string> stop;
  bool ignore_eos = false;  // generate past EOS (benchmarking)
  // Each generated token's log-probability and this many alternatives (0..kMaxTopLogprobs);
  // unset: none. The API's own name and limit are checked where it is read.
  std::optional<int64_t> logprobs;
  bool return_routing = false;  // each generated token's routing (GenerateRequest)
};

struct ValidationLimits {
  int default_max_tokens = 64;
  int max_stop_strings = 8;  // as SchedulerOptions::max_stop_strings
  int max_stop_bytes = 64;   // as SchedulerOptions::max_stop_length
  // Text prompts longer than this are refused before tokenizing. 0: the context times the
  // tokenizer's longest piece (Tokenizer::max_piece_bytes), more than any prompt that fits
  // the context can have.
  int64_t max_prompt_bytes = 0;
};

// What requests are validated against. The pointers are borrowed and must outlive every
// call that uses this context.
struct ValidationContext {
  const Tokenizer* tokenizer = nullptr;  // null: token ids only (no text, no stop strings)
  const ModelConfig* config = nullptr;
  std::string model_name;  // the served model
  ValidationLimits limits;
};

// Checks `params` and builds the scheduler request: text is tokenized with BOS, token ids
// are used as given. Thread-safe (the tokenizer is read-only).
// Errors (kInvalidArgument, message naming the field): model (unknown name); text (empty, or
// over MaxPromptBytes: refused before tokenizing);
// "text, token_ids" (both or neither); token_ids[i] (outside [0, vocab));
// max_tokens (< 1, or prompt + max_tokens over max_position_embeddings); text/token_ids
// (the prompt alone fills the context); temperature (negative or not finite); top_k (< 0);
// top_p (outside (0, 1] or not finite); stop (too many), stop[i] (empty or too long).
absl::StatusOr<GenerateRequest> BuildGenerateRequest(const GenerationParams& params,
                                                     const ValidationContext& ctx);

// The most bytes a text prompt may have (ValidationLimits::max_prompt_bytes, resolved).
int64_t MaxPromptBytes(const ValidationContext& ctx);
// kInvalidArgument naming `field` (the API's name of the text prompt) when a text prompt of
// `bytes` is over MaxPromptBytes: cheap, so the front end calls it before copying or
// tokenizing anything.
absl::Status CheckPromptBytes(size_t bytes, const ValidationContext& ctx,
                              const std::string& field = "text");

// Checks that every id is in [0, vocab). Error: kInvalidArgument naming `field`[i].
absl::Status ValidateTokenIds(const std::vector<int32_t>& ids, int vocab, const std::string& field);

}  // namespace switchyard
