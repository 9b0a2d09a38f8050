#include "coordinator/server/openai_api.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/server/json_body.h"

namespace switchyard {
namespace {

using nlohmann::json;

absl::Status Invalid(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}


absl::StatusOr<std::optional<int64_t>> OptionalInt(const json& body, const char* name) {
  const json& v = JsonField(body, name);
  if (v.is_null()) return std::optional<int64_t>();
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Invalid(name, "is out of range");
    }
    return std::optional<int64_t>(static_cast<int64_t>(v.get<uint64_t>()));
  }
  if (v.is_number_integer()) return std::optional<int64_t>(v.get<int64_t>());
  return JsonWrongType(name, "an integer", v);
}

absl::StatusOr<std::optional<double>> OptionalNumber(const json& body, const char* name) {
  const json& v = JsonField(body, name);
  if (v.is_null()) return std::optional<double>();
  if (v.is_number()) return std::optional<double>(v.get<double>());
  return JsonWrongType(name, "a number", v);
}

absl::StatusOr<bool> OptionalBool(const json& body, const char* name, bool fallback) {
  const json& v = JsonField(body, name);
  if (v.is_null()) return fallback;
  if (v.is_boolean()) return v.get<bool>();
  return JsonWrongType(name, "a boolean", v);
}

// Refuses a field that is present with a value other than its neutral one.
absl::Status RefuseUnlessNeutral(const json& body, const char* name, const json& neutral,
                                 const std::string& why) {
  const json& v = JsonField(body, name);
  if (v.is_null() || v == neutral) return absl::OkStatus();
  return Invalid(name, why);
}

// What both endpoints take and refuse alike.
absl::Status ParseCommon(const json& body, const OpenAiOptions& options, OpenAiRequest* r) {
  GenerationParams& p = r->params;
  const json& model = JsonField(body, "model");
  if (!model.is_null()) {
    if (!model.is_string()) return JsonWrongType("model", "a string", model);
    r->model = model.get<std::string>();
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, OptionalInt(body, "max_tokens"));
  if (r->chat && !max_tokens.has_value()) {
    ASSIGN_OR_RETURN(max_tokens, OptionalInt(body, "max_completion_tokens"));
  }
  p.max_tokens = max_tokens;
  if (!max_tokens.has_value()) p.default_max_tokens = options.default_max_tokens;
  ASSIGN_OR_RETURN(p.temperature, OptionalNumber(body, "temperature"));
  ASSIGN_OR_RETURN(p.top_p, OptionalNumber(body, "top_p"));
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, OptionalInt(body, "top_k"));
  if (top_k.has_value() && *top_k == -1) top_k = 0;  // vLLM's "off"
  p.top_k = top_k;
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, OptionalInt(body, "seed"));
  if (seed.has_value()) p.seed = static_cast<uint64_t>(*seed);  // negative seeds wrap, as in C

  const json& stop = JsonField(body, "stop");
  if (stop.is_string()) {
    p.stop.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    for (size_t i = 0; i < stop.size(); ++i) {
      if (!stop[i].is_string()) return JsonWrongType(absl::StrCat("stop[", i, "]"), "a string", stop[i]);
      p.stop.push_back(stop[i].get<std::string>());
    }
  } else if (!stop.is_null()) {
    return JsonWrongType("stop", "a string or a list of strings", stop);
  }
  ASSIGN_OR_RETURN(p.ignore_eos, OptionalBool(body, "ignore_eos", false));
  ASSIGN_OR_RETURN(r->return_token_ids, OptionalBool(body, "return_token_ids", false));

  ASSIGN_OR_RETURN(r->stream, OptionalBool(body, "stream", false));
  const json& so = JsonField(body, "stream_options");
  if (!so.is_null()) {
    if (!so.is_object()) return JsonWrongType("stream_options", "an object", so);
    if (!r->stream) return Invalid("stream_options", "only allowed with \"stream\": true");
    const json& usage = JsonField(so, "include_usage");
    if (!usage.is_null()) {
      if (!usage.is_boolean()) {
        return JsonWrongType("stream_options.include_usage", "a boolean", usage);
      }
      r->include_usage = usage.get<bool>();
    }
  }

  ASSIGN_OR_RETURN(std::optional<int64_t> n, OptionalInt(body, "n"));
  if (n.has_value() && *n != 1) {
    return Invalid("n", absl::StrCat("only n = 1 is supported (one choice per request), got ", *n,
                                     "; send separate requests"));
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> best_of, OptionalInt(body, "best_of"));
  if (best_of.has_value() && *best_of != 1) {
    return Invalid("best_of", absl::StrCat("only best_of = 1 is supported, got ", *best_of));
  }
  RETURN_IF_ERROR(RefuseUnlessNeutral(body, "presence_penalty", 0,
                                      "penalties are not supported; send 0 or leave it out"));
  RETURN_IF_ERROR(RefuseUnlessNeutral(body, "frequency_penalty", 0,
                                      "penalties are not supported; send 0 or leave it out"));
  RETURN_IF_ERROR(RefuseUnlessNeutral(body, "repetition_penalty", 1,
                                      "penalties are not supported; send 1 or leave it out"));
  RETURN_IF_ERROR(RefuseUnlessNeutral(body, "min_tokens", 0, "min_tokens is not supported"));
  RETURN_IF_ERROR(RefuseUnlessNeutral(body, "logit_bias", json::object(),
                                      "logit_bias is not supported"));
  for (const char* name : {"guided_json", "guided_regex", "guided_choice", "guided_grammar"}) {
    RETURN_IF_ERROR(RefuseUnlessNeutral(body, name, nullptr, "guided decoding is not supported"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseCompletionRequest(const std::string& body,
                                                     const OpenAiOptions& options) {
  ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  OpenAiRequest r;
  r.params.text_field = "prompt";
  r.params.token_ids_field = "prompt";
  RETURN_IF_ERROR(ParseCommon(j, options, &r));

  // prompt: "text" | [ids] | ["text"] | [[ids]]; a batch of several prompts is refused.
  const json* prompt = &JsonField(j, "prompt");
  if (prompt->is_null()) return Invalid("prompt", "is required");
  if (prompt->is_array() && !prompt->empty() && (prompt->front().is_string() ||
                                                 prompt->front().is_array())) {
    if (prompt->size() != 1) {
      return Invalid("prompt", absl::StrCat("one prompt per request, got a list of ",
                                            prompt->size(), "; send separate requests"));
    }
    prompt = &prompt->front();
  }
  if (prompt->is_string()) {
    r.params.text = prompt->get<std::string>();
    if (r.params.text->empty()) return Invalid("prompt", "the prompt is empty");
  } else if (prompt->is_array()) {
    if (prompt->empty()) return Invalid("prompt", "the prompt is empty");
    r.params.token_ids.reserve(prompt->size());
    for (size_t i = 0; i < prompt->size(); ++i) {
      const json& id = (*prompt)[i];
      if (!id.is_number_integer()) {
        return JsonWrongType(absl::StrCat("prompt[", i, "]"), "a token id (an integer)", id);
      }
      const int64_t v = id.is_number_unsigned() && id.get<uint64_t>() > INT32_MAX
                            ? int64_t{INT32_MAX} + 1
                            : id.get<int64_t>();
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return Invalid(absl::StrCat("prompt[", i, "]"), absl::StrCat(id.dump(), " is not a token id"));
      }
      r.params.token_ids.push_back(static_cast<int32_t>(v));
    }
  } else {
    return JsonWrongType("prompt", "a string, a list of token ids, or a list of one of either",
                     *prompt);
  }

  RETURN_IF_ERROR(RefuseUnlessNeutral(j, "echo", false, "echo is not supported"));
  RETURN_IF_ERROR(RefuseUnlessNeutral(j, "suffix", "", "suffix is not supported"));
  ASSIGN_OR_RETURN(std::optional<int64_t> logprobs, OptionalInt(j, "logprobs"));
  if (logprobs.has_value()) {
    if (*logprobs < 0 || *logprobs > kMaxCompletionLogprobs) {
      return Invalid("logprobs", absl::StrCat("must be in [0, ", kMaxCompletionLogprobs,
                                              "] (the completions API's limit), got ", *logprobs));
    }
    r.params.logprobs = logprobs;
  }
  return r;
}

absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(const json& messages) {
  if (messages.is_null()) return Invalid("messages", "is required");
  if (!messages.is_array()) return JsonWrongType("messages", "a list of messages", messages);
  if (messages.empty()) return Invalid("messages", "at least one message is required");
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string at = absl::StrCat("messages[", i, "]");
    const json& m = messages[i];
    if (!m.is_object()) return JsonWrongType(at, "an object", m);
    ChatMessage msg;
    const json& role = JsonField(m, "role");
    if (!role.is_string()) return JsonWrongType(at + ".role", "a string", role);
    msg.role = role.get<std::string>();
    const json& content = JsonField(m, "content");
    if (content.is_string()) {
      msg.content = content.get<std::string>();
    } else if (content.is_array()) {  // [{"type": "text", "text": "..."}]: joined by newlines
      std::vector<std::string> parts;
      for (size_t k = 0; k < content.size(); ++k) {
        const std::string part_at = absl::StrCat(at, ".content[", k, "]");
        const json& part = content[k];
        if (!part.is_object()) return JsonWrongType(part_at, "an object", part);
        const json& type = JsonField(part, "type");
        if (!type.is_string() || type.get<std::string>() != "text") {
          return Invalid(part_at + ".type",
                         absl::StrCat("only \"text\" parts are supported, got ",
                                      type.is_string() ? "\"" + type.get<std::string>() + "\""
                                                       : JsonTypeName(type)));
        }
        const json& text = JsonField(part, "text");
        if (!text.is_string()) return JsonWrongType(part_at + ".text", "a string", text);
        parts.push_back(text.get<std::string>());
      }
      msg.content = absl::StrJoin(parts, "\n");
    } else {
      return JsonWrongType(at + ".content", "a string or a list of text parts", content);
    }
    for (const char* tool_field : {"tool_calls", "function_call", "tool_call_id"}) {
      if (!JsonField(m, tool_field).is_null()) {
        return Invalid(absl::StrCat(at, ".", tool_field), "tool calls are not supported");
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

absl::StatusOr<OpenAiRequest> ParseChatRequest(const std::string& body,
                                               const OpenAiOptions& options,
                                               const ChatTemplate& chat_template,
                                               const Tokenizer* tokenizer) {
  ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  OpenAiRequest r;
  r.chat = true;
  r.params.text_field = "messages";
  r.params.token_ids_field = "messages";
  RETURN_IF_ERROR(ParseCommon(j, options, &r));
  for (const char* name : {"tools", "tool_choice", "functions", "function_call"}) {
    RETURN_IF_ERROR(RefuseUnlessNeutral(j, name, nullptr, "tools are not supported"));
  }
  const json& format = JsonField(j, "response_format");
  if (!format.is_null() && format != json{{"type", "text"}}) {
    return Invalid("response_format", "only {\"type\": \"text\"} is supported");
  }
  ASSIGN_OR_RETURN(const bool logprobs, OptionalBool(j, "logprobs", false));
  ASSIGN_OR_RETURN(std::optional<int64_t> top, OptionalInt(j, "top_logprobs"));
  if (top.has_value()) {
    if (*top < 0 || *top > kMaxTopLogprobs) {
      return Invalid("top_logprobs",
                     absl::StrCat("must be in [0, ", kMaxTopLogprobs, "], got ", *top));
    }
    if (!logprobs) return Invalid("top_logprobs", "needs \"logprobs\": true");
  }
  if (logprobs) r.params.logprobs = top.value_or(0);
  ASSIGN_OR_RETURN(std::vector<ChatMessage> messages, ParseChatMessages(JsonField(j, "messages")));
  if (tokenizer == nullptr) {
    return Invalid("messages", "the model has no tokenizer.model, so no chat");
  }
  ASSIGN_OR_RETURN(ChatTemplate effective, RequestChatTemplate(j, chat_template));
  ASSIGN_OR_RETURN(ChatPrompt prompt, RenderChat(effective, messages, *tokenizer));
  r.chat_prompt = std::move(prompt.text);
  r.params.token_ids = std::move(prompt.token_ids);
  return r;
}

absl::StatusOr<ChatTemplate> RequestChatTemplate(const json& body, const ChatTemplate& served) {
  const json& custom = JsonField(body, "chat_template");
  if (custom.is_null()) return served;
  if (!custom.is_string()) return JsonWrongType("chat_template", "a string (a Jinja template)", custom);
  const ChatTemplateKind kind = RecognizeChatTemplate(custom.get<std::string>());
  if (kind == ChatTemplateKind::kNone) {
    return Invalid("chat_template",
                   absl::StrCat("not a template Switchyard renders (it has no general Jinja "
                                "interpreter); it renders ",
                                absl::StrJoin(ChatTemplateNames(), ", "),
                                ": send one of their sources, or leave the field out"));
  }
  return ChatTemplate{.kind = kind};
}

namespace {

// A token as text: its piece with SentencePiece's space marker as a space, a byte-fallback
// piece as its byte, a control piece ("</s>") as spelled.
std::string TokenText(const Tokenizer& tok, int32_t id) {
  if (const int byte = tok.ByteValue(id); byte >= 0) return std::string(1, static_cast<char>(byte));
  std::string piece = tok.Piece(id);
  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpace.size(), kSpace) == 0) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

// The text as a JSON string: bytes that are not UTF-8 on their own (one byte of a character
// split over byte-fallback tokens) become U+FFFD; "bytes" keeps them exact.
json Text(const std::string& s) {
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace));
}

}  // namespace

json LogprobsJson(bool chat, const std::vector<int32_t>& ids,
                  const std::vector<GeneratedLogprob>& logprobs, const Tokenizer& tok,
                  int* text_offset) {
  const size_t n = std::min(ids.size(), logprobs.size());
  if (chat) {
    json content = json::array();
    for (size_t i = 0; i < n; ++i) {
      const std::string text = TokenText(tok, ids[i]);
      json top = json::array();
      for (const TokenLogprob& t : logprobs[i].top) {
        const std::string alt = TokenText(tok, t.id);
        top.push_back({{"token", Text(alt)}, {"logprob", t.logprob}, {"bytes", Bytes(alt)}});
      }
      content.push_back({{"token", Text(text)},
                         {"logprob", logprobs[i].logprob},
                         {"bytes", Bytes(text)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       offsets = json::array();
  for (size_t i = 0; i < n; ++i) {
    const std::string text = TokenText(tok, ids[i]);
    tokens.push_back(Text(text));
    token_logprobs.push_back(logprobs[i].logprob);
    json top = json::object();
    for (const TokenLogprob& t : logprobs[i].top) {
      top[Text(TokenText(tok, t.id)).get<std::string>()] = t.logprob;
    }
    top_logprobs.push_back(std::move(top));
    offsets.push_back(*text_offset);
    *text_offset += static_cast<int>(text.size());
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(offsets)}};
}

json OpenAiFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      break;
  }
  return nullptr;
}

json OpenAiUsage(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json CompletionResponse(const OpenAiRequest& request, const OpenAiResponseMeta& meta,
                        const GenerationResult& result, const Tokenizer* tokenizer) {
  json choice = {{"index", 0}, {"logprobs", nullptr},
                 {"finish_reason", OpenAiFinishReason(result.finish_reason)}};
  if (request.params.logprobs.has_value() && tokenizer != nullptr) {
    int offset = 0;
    choice["logprobs"] =
        LogprobsJson(request.chat, result.token_ids, result.logprobs, *tokenizer, &offset);
  }
  if (request.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", result.text}};
  } else {
    choice["text"] = result.text;
  }
  if (request.return_token_ids) choice["token_ids"] = result.token_ids;
  return {{"id", meta.id},
          {"object", request.chat ? "chat.completion" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({std::move(choice)})},
          {"usage", OpenAiUsage(result.prompt_tokens, result.completion_tokens)}};
}

json StreamChunk(const OpenAiRequest& request, const OpenAiResponseMeta& meta,
                 const std::string& delta, const json* finish, bool role_chunk,
                 const std::vector<int32_t>* token_ids, const json* logprobs) {
  json choice = {{"index", 0}, {"logprobs", logprobs != nullptr ? *logprobs : json(nullptr)},
                 {"finish_reason", finish != nullptr ? *finish : json(nullptr)}};
  if (request.chat) {
    json d = json::object();
    if (role_chunk) d["role"] = "assistant";
    if (role_chunk || !delta.empty() || finish == nullptr) d["content"] = delta;
    choice["delta"] = std::move(d);
  } else {
    choice["text"] = delta;
  }
  if (request.return_token_ids) {
    choice["token_ids"] = token_ids != nullptr ? json(*token_ids) : json::array();
  }
  json chunk = {{"id", meta.id},
                {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", meta.created},
                {"model", meta.model},
                {"choices", json::array({std::move(choice)})}};
  if (request.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json UsageChunk(const OpenAiRequest& request, const OpenAiResponseMeta& meta, int prompt_tokens,
                int completion_tokens) {
  return {{"id", meta.id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array()},
          {"usage", OpenAiUsage(prompt_tokens, completion_tokens)}};
}

int HttpStatusOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

json OpenAiError(const absl::Status& status) {
  const std::string message(status.message());
  // The field a refusal names: the message up to ": " when that is a field path
  // ("messages[0].role", "stop[1]"), never prose.
  json param = nullptr;
  const size_t colon = message.find(": ");
  if (colon != std::string::npos && colon > 0 &&
      (status.code() == absl::StatusCode::kInvalidArgument ||
       status.code() == absl::StatusCode::kNotFound)) {
    const std::string head = message.substr(0, colon);
    bool field = true;
    for (char c : head) {
      if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
            c == '[' || c == ']')) {
        field = false;
      }
    }
    if (field && head != "body") param = head;
  }
  std::string type;
  switch (HttpStatusOf(status)) {
    case 400:
      type = "invalid_request_error";
      break;
    case 401:
      type = "authentication_error";
      break;
    case 404:
      type = "not_found_error";
      break;
    case 429:
      type = "rate_limit_error";
      break;
    case 503:
      type = "service_unavailable_error";
      break;
    default:
      type = "server_error";
      break;
  }
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param},
            {"code", HttpStatusOf(status)}}}};
}

}  // namespace switchyard
