// The HTTP server of the front end (/health, /metrics, errors, request ids, TLS), through a
// real ServingFrontEnd over the fake queue and a real HTTP client (cpp-httplib's).
#include <httplib.h>

#include <string>

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
  auto r = c.Get("/v1/nothing", httplib::Headers{{"x-request-id", "my-id-42"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, R"({"error":"unknown route GET /v1/nothing"})");
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
  EXPECT_THAT(r->body, testing::Not(HasSubstr("/v1/nothing")));
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

}  // namespace
}  // namespace switchyard
