// The OpenAI-compatible API (as vLLM, SGLang and TGI serve it): request bodies of
// POST /v1/completions and POST /v1/chat/completions read into GenerationParams, and the
// response, stream-chunk and error bodies written back. Pure functions over JSON; the routes
// are in coordinator/server/http_front_end.cc.
//
//   ASSIGN_OR_RETURN(OpenAiRequest r, ParseCompletionRequest(body, {.default_max_tokens = 256}));
//   ... r.params goes through BuildGenerateRequest like every other request ...
//   std::string json = CompletionResponse(r, meta, result).dump();
//
// What is taken: model, prompt (a string, or token ids, or a list of one of either),
// messages (chat: string content or text parts), max_tokens (chat also
// max_completion_tokens), temperature, top_p, top_k (extension; -1 means off, as in vLLM),
// seed, stop (a string or a list), stream, stream_options.include_usage, n (1 only),
// logprobs (completions: an integer up to 5; chat: true, with top_logprobs up to 20: each
// generated token's log-probability under the model's distribution, before temperature),
// ignore_eos and return_token_ids (extensions, as in vLLM), chat_template (chat: the Jinja source of one of the built-in
// templates, as vLLM takes it). Fields that would change the result and are not supported are
// refused, naming them: n > 1, best_of > 1, echo, suffix, presence/frequency/repetition penalties other than neutral, logit_bias, min_tokens,
// tools/functions, response_format other than text, guided decoding. Other unknown fields
// are ignored, as vLLM ignores them.
//
// Every refusal is kInvalidArgument whose message starts with the field ("max_tokens: must be
// an integer, got \"ten\""); OpenAiError turns it into the API's error object.
// Thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/server/chat_template.h"
#include "coordinator/server/generation_result.h"
#include "coordinator/server/request_validation.h"
#include "model/tokenizer.h"

namespace switchyard {

// The completions API's limit on logprobs (alternatives per token); chat's top_logprobs goes
// to kMaxTopLogprobs (20).
inline constexpr int kMaxCompletionLogprobs = 5;

struct OpenAiOptions {
  // max_tokens when a request leaves it out, capped by what the context leaves after the
  // prompt (`serve --default-max-tokens`).
  int default_max_tokens = 256;
};

struct OpenAiRequest {
  bool chat = false;
  GenerationParams params;  // text or token_ids (chat: the rendered conversation's ids)
  std::string model;        // as the client named it; empty when it did not
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool return_token_ids = false;  // extension (as vLLM's): choices carry "token_ids"
  std::string chat_prompt;     // chat: the rendered prompt text
};

// Parses a /v1/completions body. Errors: kInvalidArgument naming the field ("body" for JSON
// that does not parse or is not an object).
absl::StatusOr<OpenAiRequest> ParseCompletionRequest(const std::string& body,
                                                     const OpenAiOptions& options);

// Parses a /v1/chat/completions body and renders its messages with `chat_template` (the
// tokenizer is required). Errors as ParseCompletionRequest, plus "messages..." and those of
// RenderChat.
absl::StatusOr<OpenAiRequest> ParseChatRequest(const std::string& body,
                                               const OpenAiOptions& options,
                                               const ChatTemplate& chat_template,
                                               const Tokenizer* tokenizer);

// The messages of a chat body (also POST /tokenize): "messages" must be a non-empty list of
// {"role": string, "content": string | [{"type": "text", "text": string}, ...]}.
absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(const nlohmann::json& messages);

// The template a chat body asks for: its "chat_template" (a Jinja source, as vLLM takes it)
// when that is one of the built-in templates, else `served`. Error: kInvalidArgument
// "chat_template: not a template Switchyard renders ..." for any other source.
absl::StatusOr<ChatTemplate> RequestChatTemplate(const nlohmann::json& body,
                                                 const ChatTemplate& served);

// What every response of one request shares.
struct OpenAiResponseMeta {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;    // the served model's name
};

// "stop" (an EOS or a stop string ended it) or "length"; null for a cancelled request.
nlohmann::json OpenAiFinishReason(FinishReason reason);
nlohmann::json OpenAiUsage(int prompt_tokens, int completion_tokens);

// The choice's "logprobs" for `ids` (one GeneratedLogprob each): chat's {"content": [{"token",
// "logprob", "bytes", "top_logprobs": [...]}]}, completions' {"tokens", "token_logprobs",
// "top_logprobs" (token text -> logprob), "text_offset"} with offsets counted from
// `*text_offset`, which advances (a stream keeps one across its chunks).
nlohmann::json LogprobsJson(bool chat, const std::vector<int32_t>& ids,
                            const std::vector<GeneratedLogprob>& logprobs,
                            const Tokenizer& tokenizer, int* text_offset);

// The whole response of a request that did not stream (`tokenizer` spells logprobs' tokens).
nlohmann::json CompletionResponse(const OpenAiRequest& request, const OpenAiResponseMeta& meta,
                                  const GenerationResult& result,
                                  const Tokenizer* tokenizer = nullptr);

// One chunk of a stream: a text delta (`finish` unset) or the last choice chunk (`finish`
// set, delta possibly empty). Chat streams begin with a chunk whose delta has the role
// (`role_chunk`). With include_usage every chunk carries "usage": null.
// With return_token_ids the choice carries the delta's `token_ids`.
nlohmann::json StreamChunk(const OpenAiRequest& request, const OpenAiResponseMeta& meta,
                           const std::string& delta, const nlohmann::json* finish,
                           bool role_chunk = false, const std::vector<int32_t>* token_ids = nullptr,
                           const nlohmann::json* logprobs = nullptr);
// The chunk after the last choice when include_usage: "choices": [] and the usage.
nlohmann::json UsageChunk(const OpenAiRequest& request, const OpenAiResponseMeta& meta,
                          int prompt_tokens, int completion_tokens);

// The HTTP status of an error (400 invalid argument, 401 unauthenticated, 404 not found,
// 429 resource exhausted, 503 unavailable, 499 cancelled, 504 deadline, 501 unimplemented,
// 500 otherwise).
int HttpStatusOf(const absl::Status& status);

// {"error": {"message", "type", "param", "code"}}: param is the field the message starts
// with (null when none), type follows the status ("invalid_request_error", ...).
nlohmann::json OpenAiError(const absl::Status& status);

}  // namespace switchyard
