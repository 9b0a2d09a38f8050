#include "coordinator/server/openai_api.h"

#include "coordinator/server/kserve_request.h"
#include "coordinator/server/kserve_rest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using nlohmann::json;
using testing::HasSubstr;

const OpenAiOptions kOptions{.default_max_tokens = 256};

absl::Status CompletionError(const std::string& body) {
  return ParseCompletionRequest(body, kOptions).status();
}

TEST(OpenAiApiTest, ACompletionRequestBecomesGenerationParams) {
  auto r = ParseCompletionRequest(
      R"({"model": "brown-moe", "prompt": "The jury", "max_tokens": 7, "temperature": 0.5,
          "top_p": 0.9, "top_k": -1, "seed": 3, "stop": ["\n", "."], "stream": true,
          "stream_options": {"include_usage": true}, "user": "ignored", "n": 1,
          "presence_penalty": 0, "echo": false, "logprobs": null})",
      kOptions);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->chat);
  EXPECT_EQ(r->model, "brown-moe");
  EXPECT_EQ(*r->params.text, "The jury");
  EXPECT_EQ(*r->params.max_tokens, 7);
  EXPECT_FALSE(r->params.default_max_tokens.has_value());
  EXPECT_EQ(*r->params.temperature, 0.5);
  EXPECT_EQ(*r->params.top_p, 0.9);
  EXPECT_EQ(*r->params.top_k, 0);  // -1 is vLLM's "off"
  EXPECT_EQ(*r->params.seed, 3u);
  EXPECT_EQ(r->params.stop, (std::vector<std::string>{"\n", "."}));
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->params.text_field, "prompt");
}

TEST(OpenAiApiTest, PromptsAsTokenIdsAndTheDefaultMaxTokens) {
  auto r = ParseCompletionRequest(R"({"prompt": [[1, 450, 4093]]})", kOptions);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->params.token_ids, (std::vector<int32_t>{1, 450, 4093}));
  EXPECT_EQ(r->params.token_ids_field, "prompt");
  EXPECT_FALSE(r->params.max_tokens.has_value());
  EXPECT_EQ(*r->params.default_max_tokens, 256);
  r = ParseCompletionRequest(R"({"prompt": ["one string"], "stop": "x"})", kOptions);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r->params.text, "one string");
  EXPECT_EQ(r->params.stop, std::vector<std::string>{"x"});
}

TEST(OpenAiApiTest, EveryRefusalNamesItsField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "body: not valid JSON"},
      {"[1]", "body: must be a JSON object"},
      {std::string(100000, '[') + std::string(100000, ']'), "body: nested deeper than 64 levels"},
      {R"({"prompt": "a", "x": )" + std::string(65, '[') + std::string(65, ']') + "}",
       "body: nested deeper than 64 levels"},
      {R"({"max_tokens": 3})", "prompt: is required"},
      {R"({"prompt": 5})", "prompt: must be a string, a list of token ids"},
      {R"({"prompt": ""})", "prompt: the prompt is empty"},
      {R"({"prompt": []})", "prompt: the prompt is empty"},
      {R"({"prompt": ["a", "b"]})", "prompt: one prompt per request, got a list of 2"},
      {R"({"prompt": [1, "x"]})", "prompt[1]: must be a token id (an integer), got a string"},
      {R"({"prompt": [1, 99999999999]})", "prompt[1]: 99999999999 is not a token id"},
      {R"({"prompt": "a", "max_tokens": "8"})", "max_tokens: must be an integer, got a string"},
      {R"({"prompt": "a", "max_tokens": 1.5})", "max_tokens: must be an integer, got a number"},
      {R"({"prompt": "a", "temperature": "hot"})", "temperature: must be a number"},
      {R"({"prompt": "a", "stop": [1]})", "stop[0]: must be a string"},
      {R"({"prompt": "a", "stream": "yes"})", "stream: must be a boolean"},
      {R"({"prompt": "a", "stream_options": {"include_usage": true}})",
       "stream_options: only allowed with \"stream\": true"},
      {R"({"prompt": "a", "n": 2})", "n: only n = 1 is supported"},
      {R"({"prompt": "a", "best_of": 3})", "best_of: only best_of = 1"},
      {R"({"prompt": "a", "echo": true})", "echo: echo is not supported"},
      {R"({"prompt": "a", "logprobs": 6})", "logprobs: must be in [0, 5]"},
      {R"({"prompt": "a", "logprobs": "2"})", "logprobs: must be an integer"},
      {R"({"prompt": "a", "presence_penalty": 0.5})", "presence_penalty: penalties are not"},
      {R"({"prompt": "a", "logit_bias": {"1": 5}})", "logit_bias: logit_bias is not supported"},
      {R"({"prompt": "a", "suffix": "z"})", "suffix: suffix is not supported"},
      {R"({"prompt": "a", "model": 7})", "model: must be a string"},
  };
  for (const auto& [body, want] : cases) {
    absl::Status s = CompletionError(body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_THAT(std::string(s.message()), HasSubstr(want)) << body;
  }
}

TEST(OpenAiApiTest, ChatRequestsRenderTheirMessages) {
  auto tok = Tokenizer::Load(std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe/tokenizer.model",
                             1, 2);
  ASSERT_TRUE(tok.ok());
  const ChatTemplate mixtral{ChatTemplateKind::kMixtral};
  auto r = ParseChatRequest(
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                  {"type": "text", "text": "there"}]}],
          "max_completion_tokens": 5})",
      kOptions, mixtral, tok->get());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->chat);
  EXPECT_EQ(r->chat_prompt, "<s> [INST] Hi\nthere [/INST]");
  EXPECT_EQ(r->params.token_ids.front(), 1);
  EXPECT_EQ(*r->params.max_tokens, 5);

  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({})", "messages: is required"},
      {R"({"messages": "hi"})", "messages: must be a list of messages"},
      {R"({"messages": []})", "messages: at least one message"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content: must be a string"},
      {R"({"messages": [{"role": 1, "content": "x"}]})", "messages[0].role: must be a string"},
      {R"({"messages": [{"role": "wizard", "content": "x"}]})", "messages[0].role: unknown role"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0].type: only \"text\" parts are supported, got \"image_url\""},
      {R"({"messages": [{"role": "user", "content": [{"type": [[1]]}]}]})",
       "messages[0].content[0].type: only \"text\" parts are supported, got a list"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{}]})",
       "tools: tools are not supported"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})",
       "top_logprobs: needs \"logprobs\": true"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})",
       "top_logprobs: must be in [0, 20]"},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})",
       "response_format: only {\"type\": \"text\"}"},
  };
  for (const auto& [body, want] : cases) {
    absl::Status s = ParseChatRequest(body, kOptions, mixtral, tok->get()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_THAT(std::string(s.message()), HasSubstr(want)) << body;
  }
  // Without a template, chat is refused saying how to get one.
  absl::Status s = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}]})", kOptions,
                                    {ChatTemplateKind::kNone, "pass --chat-template"}, tok->get())
                       .status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("chat_template: pass --chat-template"));
}

TEST(OpenAiApiTest, ResponsesAndChunksHaveTheApisShape) {
  OpenAiRequest completion;
  OpenAiRequest chat;
  chat.chat = true;
  chat.include_usage = true;
  const OpenAiResponseMeta meta{.id = "cmpl-1", .created = 1700000000, .model = "brown-moe"};
  GenerationResult result;
  result.text = " the jury";
  result.finish_reason = FinishReason::kEos;
  result.prompt_tokens = 3;
  result.completion_tokens = 2;
  EXPECT_EQ(CompletionResponse(completion, meta, result),
            json::parse(R"({"id": "cmpl-1", "object": "text_completion", "created": 1700000000,
                "model": "brown-moe", "choices": [{"index": 0, "text": " the jury",
                "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})"));
  EXPECT_EQ(CompletionResponse(chat, meta, result)["choices"][0]["message"],
            json::parse(R"({"role": "assistant", "content": " the jury"})"));
  EXPECT_EQ(CompletionResponse(chat, meta, result)["object"], "chat.completion");

  const json role = StreamChunk(chat, meta, "", nullptr, /*role_chunk=*/true);
  EXPECT_EQ(role["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(role["usage"].is_null());
  EXPECT_TRUE(role.contains("usage"));
  const json length = OpenAiFinishReason(FinishReason::kLength);
  const json last = StreamChunk(chat, meta, "", &length);
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(StreamChunk(completion, meta, " a", nullptr)["choices"][0]["text"], " a");
  EXPECT_FALSE(StreamChunk(completion, meta, " a", nullptr).contains("usage"));
  const json usage = UsageChunk(chat, meta, 3, 2);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["total_tokens"], 5);
  EXPECT_TRUE(OpenAiFinishReason(FinishReason::kCancelled).is_null());
}

TEST(OpenAiApiTest, LogprobsInBothShapes) {
  auto tok = Tokenizer::Load(std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe/tokenizer.model",
                             1, 2);
  ASSERT_TRUE(tok.ok());
  auto r = ParseCompletionRequest(R"({"prompt": "a", "logprobs": 2})", kOptions);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r->params.logprobs, 2);
  auto c = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true,
                               "top_logprobs": 4})",
                            kOptions, {ChatTemplateKind::kMixtral}, tok->get());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c->params.logprobs, 4);
  c = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": false})",
                       kOptions, {ChatTemplateKind::kMixtral}, tok->get());
  EXPECT_FALSE(c->params.logprobs.has_value());

  // " the" then " said", each with two alternatives.
  const std::vector<int32_t> ids = (*tok)->Encode(" the said", false);
  ASSERT_EQ(ids.size(), 2u);
  std::vector<GeneratedLogprob> lps(2);
  lps[0] = {-0.5f, {{ids[0], -0.5f}, {ids[1], -1.5f}}};
  lps[1] = {-0.25f, {{ids[1], -0.25f}, {ids[0], -2.0f}}};
  int offset = 0;
  const json completion = LogprobsJson(false, ids, lps, **tok, &offset);
  EXPECT_EQ(completion["tokens"], json::parse(R"([" the", " said"])"));
  EXPECT_EQ(completion["token_logprobs"], json::parse("[-0.5, -0.25]"));
  EXPECT_EQ(completion["top_logprobs"][0], json::parse(R"({" the": -0.5, " said": -1.5})"));
  EXPECT_EQ(completion["text_offset"], json::parse("[0, 4]"));
  EXPECT_EQ(offset, 9);  // " the" + " said"
  const json chat = LogprobsJson(true, ids, lps, **tok, &offset);
  EXPECT_EQ(chat["content"][1]["token"], " said");
  EXPECT_EQ(chat["content"][1]["logprob"], -0.25);
  EXPECT_EQ(chat["content"][0]["bytes"], json::parse("[32, 116, 104, 101]"));
  EXPECT_EQ(chat["content"][0]["top_logprobs"][1]["token"], " said");

  GenerationResult result;
  result.token_ids = ids;
  result.logprobs = lps;
  EXPECT_EQ(CompletionResponse(*r, {}, result, tok->get())["choices"][0]["logprobs"]["tokens"],
            completion["tokens"]);
  EXPECT_TRUE(CompletionResponse(*c, {}, result, tok->get())["choices"][0]["logprobs"].is_null());
}

TEST(OpenAiApiTest, ErrorsCarryStatusTypeAndParam) {
  json e = OpenAiError(absl::InvalidArgumentError("messages[0].role: unknown role \"x\""));
  EXPECT_EQ(e["error"]["param"], "messages[0].role");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["code"], 400);
  e = OpenAiError(absl::InvalidArgumentError("body: not valid JSON"));
  EXPECT_TRUE(e["error"]["param"].is_null());
  e = OpenAiError(absl::InvalidArgumentError("the cluster: prose, not a field"));
  EXPECT_TRUE(e["error"]["param"].is_null());
  EXPECT_EQ(OpenAiError(absl::ResourceExhaustedError("queue full"))["error"]["type"],
            "rate_limit_error");
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError("")), 429);
  EXPECT_EQ(HttpStatusOf(absl::UnauthenticatedError("")), 401);
  EXPECT_EQ(HttpStatusOf(absl::UnavailableError("")), 503);
  EXPECT_EQ(HttpStatusOf(absl::NotFoundError("")), 404);
  EXPECT_EQ(HttpStatusOf(absl::InternalError("")), 500);
}

TEST(KServeRestTest, InferJsonBecomesTheGrpcRequest) {
  auto r = InferRequestFromJson(
      R"({"id": "a1", "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1],
          "data": [["The jury"]]}], "outputs": [{"name": "text_output"}],
          "parameters": {"max_tokens": 4, "temperature": 0.5, "stop": ".", "seed": 18446744073709551615}})",
      "brown-moe", "");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->id(), "a1");
  EXPECT_EQ(r->inputs(0).contents().bytes_contents(0), "The jury");
  EXPECT_EQ(r->parameters().at("max_tokens").int64_param(), 4);
  EXPECT_EQ(r->parameters().at("seed").uint64_param(), 18446744073709551615u);
  auto p = ParseModelInferRequest(*r, "brown-moe");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p->max_tokens, 4);
  EXPECT_EQ(p->stop, std::vector<std::string>{"."});

  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"inputs": 3})", "inputs: must be a list of tensors"},
      {R"({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [4]}]})",
       "inputs[0].data[0]: must be a string (BYTES)"},
      {R"({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": "1", "data": ["a"]}]})",
       "inputs[0].shape: must be a list of integers"},
      {R"({"inputs": [], "parameters": {"max_tokens": [1]}})",
       "parameters.max_tokens: must be a boolean, a number or a string"},
      {R"({"inputs": [], "priority": 1})", "priority: unknown field"},
  };
  for (const auto& [body, want] : cases) {
    absl::Status s = InferRequestFromJson(body, "brown-moe", "").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_THAT(std::string(s.message()), HasSubstr(want)) << body;
  }
}

TEST(KServeRestTest, GenerateTakesParametersAtTheTopOrUnderParameters) {
  auto r = GenerateRequestFromJson(
      R"({"text_input": "The jury", "max_tokens": 4, "parameters": {"top_k": 2}, "stream": false})",
      "brown-moe", "");
  ASSERT_TRUE(r.ok()) << r.status();
  auto p = ParseModelInferRequest(*r, "brown-moe");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p->text, "The jury");
  EXPECT_EQ(*p->max_tokens, 4);
  EXPECT_EQ(*p->top_k, 2);
  EXPECT_THAT(std::string(GenerateRequestFromJson(R"({"max_tokens": 4})", "m", "").status().message()),
              HasSubstr("text_input: is required"));
  EXPECT_THAT(
      std::string(GenerateRequestFromJson(R"({"text_input": "a", "beam_width": 2})", "m", "")
                      .status()
                      .message()),
      HasSubstr("beam_width: unknown input"));
  EXPECT_THAT(std::string(GenerateRequestFromJson(
                              R"({"text_input": "a", "max_tokens": 2, "parameters": {"max_tokens": 3}})",
                              "m", "")
                              .status()
                              .message()),
              HasSubstr("max_tokens: given both"));
  GenerationResult result;
  result.finish_reason = FinishReason::kLength;
  result.prompt_tokens = 2;
  result.completion_tokens = 4;
  EXPECT_EQ(GenerateResponseJson("brown-moe", " x", &result),
            json::parse(R"({"model_name": "brown-moe", "model_version": "1", "text_output": " x",
                "finish_reason": "length", "prompt_tokens": 2, "completion_tokens": 4})"));
}

}  // namespace
}  // namespace switchyard
