#include "coordinator/server/request_validation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

absl::Status Invalid(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status ValidateModel(const std::string& model, const std::string& served) {
  if (model.empty() || model == served) return absl::OkStatus();
  return Invalid(
      "model", absl::StrCat("unknown model \"", model, "\"; this server serves \"", served, "\""));
}

absl::Status ValidateSampling(const GenerationParams& p) {
  // Checked as the float the sampler uses: 1e300 would become inf, 1e-300 zero.
  if (p.temperature.has_value()) {
    const float t = static_cast<float>(*p.temperature);
    if (!(std::isfinite(*p.temperature) && std::isfinite(t) && t >= 0)) {
      return Invalid("temperature",
                     absl::StrCat("must be finite (as a float) and >= 0, got ", *p.temperature));
    }
  }
  if (p.top_k.has_value() && *p.top_k < 0) {
    return Invalid("top_k", absl::StrCat("must be >= 0, got ", *p.top_k));
  }
  if (p.top_p.has_value()) {
    const float top_p = static_cast<float>(*p.top_p);
    if (!(std::isfinite(*p.top_p) && top_p > 0 && *p.top_p <= 1)) {
      // As many digits as it takes: 1.0000001 must not read as "got 1".
      // The shortest form that reads back: as a float when it is one (switchyard.v1 sends
      // floats: -0.1f prints -0.1), else as a double.
      const double v = *p.top_p;
      const bool is_float = static_cast<double>(static_cast<float>(v)) == v;
      std::string value;
      for (int digits = 6; digits <= 17; ++digits) {
        value = absl::StrFormat("%.*g", digits, v);
        double back = 0;
        if (!absl::SimpleAtod(value, &back)) continue;
        if (is_float ? static_cast<float>(back) == static_cast<float>(v) : back == v) break;
      }
      return Invalid("top_p", absl::StrCat("must be in (0, 1] (as a float), got ", value));
    }
  }
  if (p.max_tokens.has_value() && *p.max_tokens < 1) {
    return Invalid("max_tokens", absl::StrCat("must be >= 1, got ", *p.max_tokens));
  }
  return absl::OkStatus();
}

absl::Status ValidateStop(const std::vector<std::string>& stop, const ValidationLimits& limits) {
  if (static_cast<int64_t>(stop.size()) > limits.max_stop_strings) {
    return Invalid("stop", absl::StrCat("at most ", limits.max_stop_strings, " stop strings, got ",
                                        stop.size()));
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    const std::string field = absl::StrCat("stop[", i, "]");
    if (stop[i].empty()) return Invalid(field, "empty stop string");
    if (static_cast<int64_t>(stop[i].size()) > limits.max_stop_bytes) {
      return Invalid(field, absl::StrCat(stop[i].size(), " bytes; at most ", limits.max_stop_bytes,
                                         " allowed"));
    }
  }
  return absl::OkStatus();
}

// The prompt ids (BOS added to text) and the name of the field they came from.
absl::StatusOr<std::pair<std::vector<int32_t>, std::string>> PromptIds(
    const GenerationParams& p, const ValidationContext& ctx) {
  const bool has_text = p.text.has_value();
  const bool has_ids = !p.token_ids.empty();
  if (has_text == has_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("text, token_ids: exactly one must be set; got ",
                     has_text ? "both" : "neither (token_ids is empty)"));
  }
  if (has_text) {
    const std::string field(p.text_field);
    if (p.text->empty()) return Invalid(field, "the prompt is empty");
    if (ctx.tokenizer == nullptr) {
      return Invalid(field, field == "text"
                                ? "the model has no tokenizer.model; send token_ids"
                                : "the model has no tokenizer.model, so no text prompts");
    }
    RETURN_IF_ERROR(CheckPromptBytes(p.text->size(), ctx, field));
    return std::make_pair(ctx.tokenizer->Encode(*p.text, /*add_bos=*/true), field);
  }
  const std::string field(p.token_ids_field);
  RETURN_IF_ERROR(ValidateTokenIds(p.token_ids, ctx.config->vocab_size, field));
  return std::make_pair(p.token_ids, field);
}

}  // namespace

int64_t MaxPromptBytes(const ValidationContext& ctx) {
  if (ctx.limits.max_prompt_bytes > 0) return ctx.limits.max_prompt_bytes;
  const int piece = ctx.tokenizer != nullptr ? ctx.tokenizer->max_piece_bytes() : 1;
  return int64_t{ctx.config->max_position_embeddings} * std::max(piece, 1);
}

absl::Status CheckPromptBytes(size_t bytes, const ValidationContext& ctx,
                              const std::string& field) {
  const int64_t limit = MaxPromptBytes(ctx);
  if (static_cast<int64_t>(std::min<size_t>(bytes, INT64_MAX)) <= limit) return absl::OkStatus();
  return Invalid(field, absl::StrCat(bytes, " bytes; the model's context of ",
                                      ctx.config->max_position_embeddings,
                                      " tokens holds at most ", limit, " bytes of text"));
}

absl::Status ValidateTokenIds(const std::vector<int32_t>& ids, int vocab,
                              const std::string& field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return Invalid(absl::StrCat(field, "[", i, "]"),
                     absl::StrCat(ids[i], " is not a token id in [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateRequest> BuildGenerateRequest(const GenerationParams& params,
                                                     const ValidationContext& ctx) {
  RETURN_IF_ERROR(ValidateModel(params.model, ctx.model_name));
  RETURN_IF_ERROR(ValidateSampling(params));
  RETURN_IF_ERROR(ValidateStop(params.stop, ctx.limits));
  if (!params.stop.empty() && ctx.tokenizer == nullptr) {
    return Invalid("stop", "the model has no tokenizer.model, so no text to match");
  }
  ASSIGN_OR_RETURN(auto prompt, PromptIds(params, ctx));

  const int64_t context = ctx.config->max_position_embeddings;
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.first.size());
  if (prompt_tokens >= context) {
    return Invalid(prompt.second, absl::StrCat("the prompt is ", prompt_tokens,
                                               " tokens; the model's context is ", context));
  }
  int64_t max_tokens = params.max_tokens.value_or(ctx.limits.default_max_tokens);
  if (!params.max_tokens.has_value() && params.default_max_tokens.has_value()) {
    max_tokens = std::min(*params.default_max_tokens, context - prompt_tokens);
  }
  if (max_tokens > context - prompt_tokens) {  // no overflow for max_tokens near 2^63
    return Invalid("max_tokens",
                   absl::StrCat(prompt_tokens, " prompt tokens + ", max_tokens,
                                " max_tokens exceed the model's context of ", context,
                                " tokens; at most ", context - prompt_tokens, " allowed"));
  }

  GenerateRequest req;
  req.prompt_ids = std::move(prompt.first);
  req.max_tokens = static_cast<int>(max_tokens);
  req.sampling.temperature = static_cast<float>(params.temperature.value_or(0.0));
  const int64_t top_k = params.top_k.value_or(0);
  req.sampling.top_k = top_k >= ctx.config->vocab_size ? 0 : static_cast<int>(top_k);
  req.sampling.top_p = static_cast<float>(params.top_p.value_or(1.0));
  req.sampling.seed = params.seed.value_or(0);
  req.stop = params.stop;
  req.stop_at_eos = !params.ignore_eos;
  req.return_routing = params.return_routing;
  if (params.logprobs.has_value()) {
    if (*params.logprobs < 0 || *params.logprobs > kMaxTopLogprobs) {
      return Invalid("logprobs", absl::StrCat("must be in [0, ", kMaxTopLogprobs, "], got ",
                                              *params.logprobs));
    }
    req.logprobs = static_cast<int>(*params.logprobs);
  }
  return req;
}

}  // namespace switchyard
