// End to end through a real C++ gRPC client against a serving cluster that CTest started
// under mpirun (launch/cluster.sh; SWITCHYARD_E2E_DIR names its folder): the 4-rank
// cluster, and one rank on the CPU or a GPU (tests/serve_single_rank_e2e_test.sh).
#include <atomic>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kserve/grpc_predict_v2.grpc.pb.h"
#include "switchyard/v1/switchyard.grpc.pb.h"

namespace switchyard {
namespace {

namespace v1 = ::switchyard::v1;

std::string Target() {
  const char* dir = std::getenv("SWITCHYARD_E2E_DIR");
  std::ifstream in(std::string(dir ? dir : ".") + "/port");
  int port = 0;
  in >> port;
  return "127.0.0.1:" + std::to_string(port);
}

class ServeE2E : public testing::Test {
 protected:
  void SetUp() override {
    channel_ = grpc::CreateChannel(Target(), grpc::InsecureChannelCredentials());
    stub_ = v1::Switchyard::NewStub(channel_);
  }
  v1::GenerateRequest Request(const std::string& text, int max_tokens) {
    v1::GenerateRequest r;
    r.set_text(text);
    r.set_max_tokens(max_tokens);
    r.set_temperature(0);
    return r;
  }
  // Streams one request to the end; returns the ids and the final status.
  grpc::Status Stream(const v1::GenerateRequest& req, std::vector<int32_t>* ids,
                      std::string* text = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    auto reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      ids->insert(ids->end(), msg.token_ids().begin(), msg.token_ids().end());
      if (text) *text += msg.text();
    }
    return reader->Finish();
  }
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Switchyard::Stub> stub_;
};

const std::vector<std::string> kPrompts = {
    "The jury said that", "In the morning, the old man", "The President told reporters",
    "A small boy", "The city council met", "It was", "Mr. Smith and his wife went to the",
    "The committee", "Last night", "The church", "Three of the", "When he came home",
    "The state", "She said", "After the war", "The new school"};

TEST_F(ServeE2E, HealthIsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* service : {"", "switchyard.v1.Switchyard"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(ServeE2E, SixtyFourConcurrentStreamsEqualEachRequestAlone) {
  const int kDistinct = static_cast<int>(kPrompts.size());
  std::vector<std::vector<int32_t>> alone(kDistinct);
  for (int i = 0; i < kDistinct; ++i) {
    ASSERT_TRUE(Stream(Request(kPrompts[i], 8 + 4 * i), &alone[i]).ok());
    ASSERT_FALSE(alone[i].empty());
  }
  std::vector<std::vector<int32_t>> got(64);
  std::vector<grpc::Status> status(64);
  std::vector<std::thread> threads;
  for (int j = 0; j < 64; ++j) {
    threads.emplace_back([&, j] {
      status[j] = Stream(Request(kPrompts[j % kDistinct], 8 + 4 * (j % kDistinct)), &got[j]);
    });
  }
  for (auto& t : threads) t.join();
  for (int j = 0; j < 64; ++j) {
    ASSERT_TRUE(status[j].ok()) << status[j].error_message();
    EXPECT_EQ(got[j], alone[j % kDistinct]) << "stream " << j;
  }
}

TEST_F(ServeE2E, CancellingHalfOfTwoHundredStreamsReturnsKvToIdle) {
  std::atomic<int> cancelled{0}, finished{0};
  std::vector<std::thread> threads;
  for (int j = 0; j < 200; ++j) {
    threads.emplace_back([&, j] {
      grpc::ClientContext ctx;
      auto reader = stub_->Generate(&ctx, Request(kPrompts[j % kPrompts.size()], 120));
      v1::GenerateResponse msg;
      int messages = 0;
      while (reader->Read(&msg)) {
        if (j % 2 == 0 && ++messages == 2) ctx.TryCancel();
      }
      grpc::Status st = reader->Finish();
      if (st.error_code() == grpc::StatusCode::CANCELLED) ++cancelled;
      if (st.ok()) ++finished;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GE(cancelled.load(), 90);  // a few may finish at EOS before their second message
  EXPECT_EQ(cancelled.load() + finished.load(), 200);
  // Every KV block is free again once the scheduler has seen the cancellations.
  bool idle = false;
  for (int i = 0; i < 100 && !idle; ++i) {
    grpc::ClientContext ctx;
    v1::GetClusterStatusResponse s;
    ASSERT_TRUE(stub_->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &s).ok());
    idle = s.scheduler().running() == 0 && s.scheduler().waiting() == 0;
    for (int dp = 0; dp < s.scheduler().free_kv_blocks_size(); ++dp) {
      idle &= s.scheduler().free_kv_blocks(dp) == s.scheduler().total_kv_blocks(dp);
    }
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(idle) << "KV blocks did not return to idle";
}

TEST_F(ServeE2E, BadInputGetsInvalidArgumentNamingTheFieldWithoutDisturbingOthers) {
  std::vector<int32_t> background;
  grpc::Status background_status;
  std::thread running([&] {
    background_status = Stream(Request("In the morning, the old man", 100), &background);
  });
  struct Case {
    std::function<void(v1::GenerateRequest*)> mutate;
    const char* field;
  };
  const std::vector<Case> cases = {
      {[](v1::GenerateRequest* r) { r->set_text(""); }, "text"},
      {[](v1::GenerateRequest* r) { r->add_token_ids(5); }, "token_ids"},
      {[](v1::GenerateRequest* r) { r->set_temperature(-1); }, "temperature"},
      {[](v1::GenerateRequest* r) { r->set_top_p(0); }, "top_p"},
      {[](v1::GenerateRequest* r) { r->set_top_k(-3); }, "top_k"},
      {[](v1::GenerateRequest* r) { r->set_max_tokens(0); }, "max_tokens"},
      {[](v1::GenerateRequest* r) { r->set_max_tokens(5000); }, "max_tokens"},
      {[](v1::GenerateRequest* r) { r->set_model("no-such-model"); }, "model"},
      {[](v1::GenerateRequest* r) {
         r->clear_text();
         r->add_token_ids(1);
         r->add_token_ids(99999);
       },
       "token_ids"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest req = Request("The jury", 8);
    c.mutate(&req);
    std::vector<int32_t> ids;
    grpc::Status st = Stream(req, &ids);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_THAT(st.error_message(), testing::HasSubstr(c.field));
  }
  running.join();
  ASSERT_TRUE(background_status.ok());
  EXPECT_FALSE(background.empty());
}

TEST_F(ServeE2E, KServeModelInferRoundTrip) {
  // The reference: the same greedy request through switchyard.v1.
  grpc::ClientContext c1;
  v1::CompleteResponse complete;
  ASSERT_TRUE(stub_->Complete(&c1, Request("The jury said that", 24), &complete).ok());
  auto kserve = inference::GRPCInferenceService::NewStub(channel_);
  inference::ModelInferRequest req;
  req.set_model_name("brown-moe");
  auto* in = req.add_inputs();
  in->set_name("text_input");
  in->set_datatype("BYTES");
  in->add_shape(1);
  in->mutable_contents()->add_bytes_contents("The jury said that");
  (*req.mutable_parameters())["max_tokens"].set_int64_param(24);
  (*req.mutable_parameters())["temperature"].set_double_param(0);
  grpc::ClientContext c2;
  inference::ModelInferResponse resp;
  grpc::Status st = kserve->ModelInfer(&c2, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.outputs_size(), 1);
  EXPECT_EQ(resp.outputs(0).name(), "text_output");
  ASSERT_EQ(resp.outputs(0).contents().bytes_contents_size(), 1);
  EXPECT_EQ(resp.outputs(0).contents().bytes_contents(0), complete.text());
  grpc::ClientContext c3;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(kserve->ServerLive(&c3, inference::ServerLiveRequest(), &live).ok());
  EXPECT_TRUE(live.live());
}

TEST_F(ServeE2E, ClusterStatusShowsEveryRankAndRoutedTokens) {
  grpc::ClientContext ctx;
  v1::GetClusterStatusResponse s;
  ASSERT_TRUE(stub_->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &s).ok());
  ASSERT_EQ(s.ranks_size(), s.world_size());
  EXPECT_EQ(s.world_size(), s.ep() * s.pp());
  int64_t routed = 0, steps = 0;
  for (const auto& layer : s.expert_token_counts()) {
    for (int64_t t : layer.tokens()) routed += t;
  }
  for (const auto& r : s.ranks()) {
    EXPECT_GT(r.weight_bytes(), 0);
    steps += r.steps();
  }
  EXPECT_GT(routed, 0) << "earlier tests routed tokens";
  EXPECT_GT(steps, 0);
}

}  // namespace
}  // namespace switchyard
