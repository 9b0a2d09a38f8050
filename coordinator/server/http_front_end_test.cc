// The HTTP server of the front end (/health, /metrics, errors, request ids, TLS), through a
// real ServingFrontEnd over the fake queue and a real HTTP client (cpp-httplib's).
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/server/chat_template.h"

#include "coordinator/server/serving_test_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using testing::HasSubstr;

class HttpTest : public ServingTest {
 protected:
  void SetUp() override {}  // each test starts the server it needs

  static ServingFrontEnd::Options WithHttp() {
    ServingFrontEnd::Options o = DefaultOptions();
    o.http_listen = "127.0.0.1:0";
    return o;
  }
  httplib::Client Client() { return httplib::Client("127.0.0.1", front_->http_bound_port()); }
};

TEST_F(HttpTest, OffUnlessAsked) {
  StartServer(DefaultOptions());
  EXPECT_EQ(front_->http_bound_port(), 0);
}

TEST_F(HttpTest, HealthFollowsReadinessAndDrain) {
  StartServer(WithHttp(), /*ready=*/false);
  ASSERT_GT(front_->http_bound_port(), 0);
  httplib::Client c = Client();
  auto r = c.Get("/health");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, R"({"reason":"server is not ready","status":"not serving"})");
  front_->SetReady(true);
  r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"status":"serving"})");
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  front_->Drain();
  r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_THAT(r->body, HasSubstr("server is draining"));
}

TEST_F(HttpTest, AFailedClusterIsNotHealthySayingWhy) {
  StartServer(WithHttp());
  front_->Fail(absl::UnavailableError("rank 3 (pid 7 on node2) is gone"));
  auto r = Client().Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_THAT(r->body, HasSubstr("the cluster failed: rank 3 (pid 7 on node2) is gone"));
}

TEST_F(HttpTest, MetricsCountGrpcRequestsAndShowTheCluster) {
  StartServer(WithHttp());
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, "said it", FinishReason::kStop));
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  ASSERT_TRUE(stub_->Complete(&ctx, TextRequest("The jury"), &resp).ok());
  grpc::ClientContext ctx2;
  v1::GenerateRequest bad = TextRequest("The jury", /*max_tokens=*/-1);
  EXPECT_FALSE(stub_->Complete(&ctx2, bad, &resp).ok());

  auto r = Client().Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(r->body, HasSubstr("switchyard_requests_total{code=\"OK\",method=\"switchyard.v1."
                                 "Switchyard/Complete\",protocol=\"grpc\"} 1\n"));
  EXPECT_THAT(r->body, HasSubstr("switchyard_requests_total{code=\"INVALID_ARGUMENT\",method="
                                 "\"switchyard.v1.Switchyard/Complete\",protocol=\"grpc\"} 1\n"));
  // The cluster snapshot (TestCluster) and the model.
  EXPECT_THAT(r->body, HasSubstr("switchyard_rank_steps_total{rank=\"1\"} 31\n"));
  EXPECT_THAT(r->body, HasSubstr("switchyard_rank_weight_bytes{rank=\"0\"} 1000\n"));
  EXPECT_THAT(r->body,
              HasSubstr("switchyard_expert_routed_tokens_total{layer=\"1\",expert=\"7\"} 9\n"));
  EXPECT_THAT(r->body, HasSubstr("switchyard_info{model=\"brown-moe\""));
  EXPECT_THAT(r->body, HasSubstr("switchyard_serving 1\n"));
}

TEST_F(HttpTest, UnknownRouteIs404JsonAndKeepsTheClientsRequestId) {
  StartServer(WithHttp());
  httplib::Client c = Client();
  auto r = c.Get("/v9/nothing", httplib::Headers{{"x-request-id", "my-id-42"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, R"({"error":"unknown route GET /v9/nothing"})");
  EXPECT_EQ(r->get_header_value("x-request-id"), "my-id-42");
  // An id with a space is not the client's to choose: the server makes one.
  r = c.Get("/health", httplib::Headers{{"x-request-id", "two words"}});
  ASSERT_TRUE(r);
  EXPECT_NE(r->get_header_value("x-request-id"), "two words");
  EXPECT_FALSE(r->get_header_value("x-request-id").empty());
  // Unknown paths are counted under one label, whatever the path.
  r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_THAT(r->body, HasSubstr("switchyard_requests_total{code=\"404\",method=\"unmatched\","
                                 "protocol=\"http\"} 1\n"));
  EXPECT_THAT(r->body, testing::Not(HasSubstr("/v9/nothing")));
}

// A path of any bytes (here not UTF-8, with a newline) is answered, escaped, in valid JSON.
TEST_F(HttpTest, AHostilePathIsEscapedInTheAnswer) {
  StartServer(WithHttp());
  auto r = Client().Get("/%FF%0Aaccess:%20forged");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, R"({"error":"unknown route GET /\\xff\\naccess: forged"})");
}

TEST_F(HttpTest, BodyOverTheLimitIs413) {
  ServingFrontEnd::Options o = WithHttp();
  o.max_message_bytes = 1024;
  StartServer(o);
  auto r = Client().Post("/metrics", std::string(4096, 'x'), "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(
      r->body,
      R"j({"error":"request body larger than 1024 bytes (the server's --max-message-bytes)"})j");
}

TEST_F(HttpTest, HttpsWithTheGrpcCertificate) {
  const std::string dir = kTestRoot + "/coordinator/server/testdata/";
  ServingFrontEnd::Options o = WithHttp();
  o.tls_cert = dir + "server.crt";
  o.tls_key = dir + "server.key";
  front_ = std::make_unique<ServingFrontEnd>(&fake_, tokenizer_, *config_, &TestCluster,
                                             ServingTopology{.ep = 2, .pp = 1, .world_size = 2}, o);
  ASSERT_TRUE(front_->Start().ok());
  front_->SetReady(true);
  httplib::SSLClient tls("localhost", front_->http_bound_port());
  tls.set_ca_cert_path((dir + "server.crt").c_str());
  tls.enable_server_certificate_verification(true);
  auto r = tls.Get("/health");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  // Plain HTTP to the TLS port gets no answer.
  httplib::Client plain("127.0.0.1", front_->http_bound_port());
  plain.set_connection_timeout(2);
  plain.set_read_timeout(2);
  EXPECT_FALSE(plain.Get("/health"));
}

TEST_F(HttpTest, APortInUseIsRefusedNamingTheAddress) {
  StartServer(WithHttp());
  ServingFrontEnd::Options o = DefaultOptions();
  o.http_listen = "127.0.0.1:" + std::to_string(front_->http_bound_port());
  ServingFrontEnd second(&fake_, tokenizer_, *config_, &TestCluster,
                         ServingTopology{.ep = 2, .pp = 1, .world_size = 2}, o);
  absl::Status s = second.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(o.http_listen));
}

TEST_F(HttpTest, AMalformedAddressIsInvalidArgument) {
  ServingFrontEnd::Options o = DefaultOptions();
  o.http_listen = "127.0.0.1:99999";
  ServingFrontEnd front(&fake_, tokenizer_, *config_, &TestCluster,
                        ServingTopology{.ep = 2, .pp = 1, .world_size = 2}, o);
  absl::Status s = front.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("http_listen 127.0.0.1:99999"));
}

// The data lines of a server-sent-event stream, in order ("[DONE]" included).
std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

nlohmann::json Json(const std::string& s) { return nlohmann::json::parse(s); }

TEST_F(HttpTest, ACompletionAnswersWithTheOpenAiShape) {
  StartServer(WithHttp());
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, " the jury", FinishReason::kStop));
  auto r = Client().Post("/v1/completions", httplib::Headers{{"x-request-id", "req-7"}},
                         R"({"model": "brown-moe", "prompt": "The jury said"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  const nlohmann::json j = Json(r->body);
  EXPECT_EQ(j["id"], "cmpl-req-7");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "brown-moe");
  EXPECT_EQ(j["choices"][0]["text"], "the jury");  // the fake decodes without the prompt
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["completion_tokens"], j["usage"]["total_tokens"].get<int>() -
                                                  j["usage"]["prompt_tokens"].get<int>());
  // No max_tokens: --default-max-tokens (256), here under what the context leaves.
  ASSERT_EQ(fake_.submitted().size(), 1u);
  EXPECT_EQ(fake_.submitted()[0].prompt_ids, tokenizer_->Encode("The jury said", true));
  EXPECT_EQ(fake_.submitted()[0].max_tokens, 256);
  // Counted under its route.
  auto m = Client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_THAT(m->body, HasSubstr("switchyard_requests_total{code=\"200\",method=\"POST "
                                 "/v1/completions\",protocol=\"http\"} 1\n"));
}

TEST_F(HttpTest, AChatStreamSendsRoleDeltasUsageAndDone) {
  ServingFrontEnd::Options o = WithHttp();
  o.chat_template = {ChatTemplateKind::kMixtral};
  StartServer(o);
  fake_.PushScript(
      FakeGenerationQueue::TextScript(*tokenizer_, " the jury said", FinishReason::kLength));
  auto r = Client().Post("/v1/chat/completions",
                         R"({"messages": [{"role": "user", "content": "Who?"}], "max_tokens": 3,
                             "stream": true, "stream_options": {"include_usage": true}})",
                         "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<std::string> data = SseData(r->body);
  ASSERT_GE(data.size(), 4u) << r->body;
  EXPECT_EQ(data.back(), "[DONE]");
  EXPECT_EQ(Json(data[0])["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (size_t i = 0; i + 2 < data.size(); ++i) {
    const nlohmann::json chunk = Json(data[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    text += chunk["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(text, "the jury said");  // the fake decodes without the prompt
  EXPECT_EQ(Json(data[data.size() - 3])["choices"][0]["finish_reason"], "length");
  const nlohmann::json usage = Json(data[data.size() - 2]);
  EXPECT_EQ(usage["choices"], nlohmann::json::array());
  EXPECT_EQ(usage["usage"]["prompt_tokens"],
            static_cast<int>(fake_.submitted()[0].prompt_ids.size()));
  // The conversation reached the queue rendered by the template.
  auto prompt = RenderChat({ChatTemplateKind::kMixtral}, {{"user", "Who?"}}, *tokenizer_);
  EXPECT_EQ(fake_.submitted()[0].prompt_ids, prompt->token_ids);
}

TEST_F(HttpTest, ChatWithoutATemplateIsRefusedSayingHow) {
  ServingFrontEnd::Options o = WithHttp();
  o.chat_template = {ChatTemplateKind::kNone, "the model has no chat template; start the server "
                                              "with --chat-template mixtral|mixtral-v0.1|chatml"};
  StartServer(o);
  auto r = Client().Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "a"}]})",
                         "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(Json(r->body)["error"]["param"], "chat_template");
  EXPECT_THAT(r->body, HasSubstr("--chat-template mixtral"));
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(HttpTest, TokensAndStatusCodesOfRefusals) {
  ServingFrontEnd::Options o = WithHttp();
  o.auth_token = "s3cret";
  StartServer(o);
  httplib::Client c = Client();
  const std::string body = R"({"prompt": "a", "max_tokens": 1})";
  auto r = c.Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(Json(r->body)["error"]["type"], "authentication_error");
  r = c.Post("/v1/completions", httplib::Headers{{"Authorization", "Bearer wrong"}}, body,
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->body, HasSubstr("invalid bearer token"));
  r = c.Get("/v2/models/brown-moe");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(Json(r->body)["error"], "missing \"authorization: Bearer <token>\" header");
  // Probes stay open.
  r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);

  const httplib::Headers auth{{"Authorization", "bearer s3cret"}};
  r = c.Post("/v1/completions", auth, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  fake_.SetSubmitError(absl::ResourceExhaustedError("request queue is full (256 waiting)"));
  r = c.Post("/v1/completions", auth, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(Json(r->body)["error"]["type"], "rate_limit_error");
  r = c.Post("/v2/models/brown-moe/generate", auth, R"({"text_input": "a"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  fake_.SetSubmitError(absl::OkStatus());
  r = c.Post("/v1/completions", auth, R"({"prompt": "a", "model": "gpt-4"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(Json(r->body)["error"]["param"], "model");
  r = c.Post("/v1/nothing", auth, "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(Json(r->body)["error"]["type"], "not_found_error");
  front_->Drain();
  r = c.Post("/v1/completions", auth, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_THAT(r->body, HasSubstr("server is draining"));
  r = c.Get("/v2/health/ready", auth);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(Json(r->body)["ready"], false);
  r = c.Get("/v2/health/live", auth);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpTest, AClientThatLeavesAStreamCancelsItsRequest) {
  StartServer(WithHttp());
  // Tokens keep coming (as from a running request), so the server writes, and finds the
  // client gone, soon after it left.
  FakeGenerationQueue::Script script;
  script.gap = absl::Milliseconds(2);
  for (int i = 0; i < 5000; ++i) {
    RequestEvent e;
    e.token_ids = {42};
    e.text = " ok";
    script.events.push_back(e);
  }
  script.hold_until_cancel = true;
  fake_.PushScript(script);
  httplib::Client c = Client();
  int chunks = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = R"({"prompt": "a", "stream": true, "max_tokens": 100})";
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
    return ++chunks < 2;  // leave after the first chunk
  };
  auto r = c.send(req);
  EXPECT_FALSE(r);  // the client ended it
  c.stop();
  EXPECT_TRUE(fake_.WaitForCancels(1, absl::Seconds(10)));
}

// A request that does not stream is cancelled too when its client gives up waiting.
TEST_F(HttpTest, AClientThatGivesUpOnAnAnswerCancelsItsRequest) {
  StartServer(WithHttp());
  FakeGenerationQueue::Script script;
  script.hold_until_cancel = true;  // no answer until cancelled
  fake_.PushScript(script);
  fake_.PushScript(script);
  httplib::Client c = Client();
  c.set_read_timeout(std::chrono::milliseconds(300));
  EXPECT_FALSE(c.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 100})",
                      "application/json"));
  c.stop();
  EXPECT_TRUE(fake_.WaitForCancels(1, absl::Seconds(10)));
  httplib::Client k = Client();
  k.set_read_timeout(std::chrono::milliseconds(300));
  EXPECT_FALSE(k.Post("/v2/models/brown-moe/generate", R"({"text_input": "a"})",
                      "application/json"));
  k.stop();
  EXPECT_TRUE(fake_.WaitForCancels(2, absl::Seconds(10)));
}

TEST_F(HttpTest, KServeRestInferGenerateAndMetadata) {
  StartServer(WithHttp());
  httplib::Client c = Client();
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, " the jury", FinishReason::kEos));
  auto r = c.Post("/v2/models/brown-moe/infer",
                  R"({"id": "q1", "inputs": [{"name": "text_input", "datatype": "BYTES",
                      "shape": [1], "data": ["The jury"]}], "parameters": {"max_tokens": 5}})",
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  nlohmann::json j = Json(r->body);
  EXPECT_EQ(j["id"], "q1");
  EXPECT_EQ(j["outputs"][0]["data"][0], "the jury");
  EXPECT_EQ(j["parameters"]["finish_reason"], "eos");
  EXPECT_EQ(fake_.submitted().back().max_tokens, 5);

  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, " the jury", FinishReason::kLength));
  r = c.Post("/v2/models/brown-moe/versions/1/generate_stream",
             R"({"text_input": "The jury", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  std::string text;
  const std::vector<std::string> data = SseData(r->body);
  for (const std::string& d : data) text += Json(d)["text_output"].get<std::string>();
  EXPECT_EQ(text, "the jury");
  EXPECT_EQ(Json(data.back())["finish_reason"], "length");

  r = c.Post("/v2/models/other/generate", R"({"text_input": "a"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_THAT(Json(r->body)["error"].get<std::string>(), HasSubstr("unknown model \"other\""));
  r = c.Post("/v2/models/brown-moe/infer", R"({"inputs": [{"name": "text_input",
             "datatype": "INT32", "shape": [1], "data": [1]}]})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_THAT(r->body, HasSubstr("datatype must be BYTES"));
  r = c.Get("/v2/models/brown-moe");
  ASSERT_TRUE(r);
  EXPECT_EQ(Json(r->body)["inputs"][0]["name"], "text_input");
  r = c.Get("/v2/models/brown-moe/ready");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, R"({"name":"brown-moe","ready":true})");
  r = c.Get("/v2");
  ASSERT_TRUE(r);
  EXPECT_EQ(Json(r->body)["extensions"][0], "generate");
}

}  // namespace
}  // namespace switchyard
