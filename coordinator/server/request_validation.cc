#include "coordinator/server/request_validation.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
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
  if (p.temperature.has_value() && !(std::isfinite(*p.temperature) && *p.temperature >= 0)) {
    return Invalid("temperature", absl::StrCat("must be finite and >= 0, got ", *p.temperature));
  }
  if (p.top_k.has_value() && *p.top_k < 0) {
    return Invalid("top_k", absl::StrCat("must be >= 0, got ", *p.top_k));
  }
  if (p.top_p.has_value() && !(std::isfinite(*p.top_p) && *p.top_p > 0 && *p.top_p <= 1)) {
    return Invalid("top_p", absl::StrCat("must be in (0, 1], got ", *p.top_p));
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
        absl::StrCat("exactly one of text, token_ids must be set; got ",
                     has_text ? "both" : "neither (token_ids is empty)"));
  }
  if (has_text) {
    if (p.text->empty()) return Invalid("text", "the prompt is empty");
    if (ctx.tokenizer == nullptr) {
      return Invalid("text", "the model has no tokenizer.model; send token_ids");
    }
    return std::make_pair(ctx.tokenizer->Encode(*p.text, /*add_bos=*/true), std::string("text"));
  }
  RETURN_IF_ERROR(ValidateTokenIds(p.token_ids, ctx.config->vocab_size, "token_ids"));
  return std::make_pair(p.token_ids, std::string("token_ids"));
}

}  // namespace

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
  const int64_t max_tokens = params.max_tokens.value_or(ctx.limits.default_max_tokens);
  if (prompt_tokens >= context) {
    return Invalid(prompt.second, absl::StrCat("the prompt is ", prompt_tokens,
                                               " tokens; the model's context is ", context));
  }
  if (prompt_tokens + max_tokens > context) {
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
  return req;
}

}  // namespace switchyard
