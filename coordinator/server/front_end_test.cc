// ServingFrontEnd over real gRPC (127.0.0.1, ephemeral port) with a scripted queue.
#include "coordinator/server/front_end.h"

#include <atomic>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "common/log.h"
#include "coordinator/server/serving_test_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using grpc::StatusCode;
using grpc::health::v1::HealthCheckResponse;
using testing::HasSubstr;

using Mutation = std::function<void(v1::GenerateRequest*)>;

struct BadCase {
  const char* name;
  Mutation mutate;
  std::string field;  // the message must contain it
};

std::vector<BadCase> BadCases() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto with_text = [](Mutation m) {
    return [m](v1::GenerateRequest* r) {
      r->set_text("The jury said");
      m(r);
    };
  };
  return {
      {"empty text", [](auto* r) { r->set_text(""); }, "text:"},
      {"neither prompt", [](auto* r) {}, "text, token_ids:"},
      {"both prompts",
       [](auto* r) {
         r->set_text("hi");
         r->add_token_ids(1);
       },
       "text, token_ids:"},
      {"id >= vocab",
       [](auto* r) {
         for (int id : {1, 17, 4096}) r->add_token_ids(id);
       },
       "token_ids[2]"},
      {"negative id",
       [](auto* r) {
         r->add_token_ids(1);
         r->add_token_ids(-1);
       },
       "token_ids[1]"},
      {"over context", with_text([](auto* r) { r->set_max_tokens(1020); }), "max_tokens"},
      {"prompt fills context",
       [](auto* r) {
         for (int i = 0; i < 1024; ++i) r->add_token_ids(5);
       },
       "token_ids"},
      {"negative temperature", with_text([](auto* r) { r->set_temperature(-1); }), "temperature"},
      {"nan temperature", with_text([=](auto* r) { r->set_temperature(nan); }), "temperature"},
      {"inf temperature", with_text([=](auto* r) { r->set_temperature(inf); }), "temperature"},
      {"zero top_p", with_text([](auto* r) { r->set_top_p(0); }), "top_p"},
      {"top_p above 1", with_text([](auto* r) { r->set_top_p(1.5f); }), "top_p"},
      {"nan top_p", with_text([=](auto* r) { r->set_top_p(nan); }), "top_p"},
      {"negative top_k", with_text([](auto* r) { r->set_top_k(-1); }), "top_k"},
      {"zero max_tokens", with_text([](auto* r) { r->set_max_tokens(0); }), "max_tokens"},
      {"negative max_tokens", with_text([](auto* r) { r->set_max_tokens(-3); }), "max_tokens"},
      {"nine stop strings", with_text([](auto* r) {
         for (int i = 0; i < 9; ++i) r->add_stop(std::string("s"));
       }),
       "stop"},
      {"empty stop", with_text([](auto* r) { r->add_stop(std::string("")); }), "stop[0]"},
      {"long stop", with_text([](auto* r) {
         r->add_stop(std::string("ok"));
         r->add_stop(std::string(65, 'x'));
       }),
       "stop[1]"},
      {"unknown model", with_text([](auto* r) { r->set_model("mixtral-8x7b"); }), "model"},
  };
}

void ExpectBadRequestRefused(v1::Switchyard::Stub* stub, const BadCase& c) {
  SCOPED_TRACE(c.name);
  v1::GenerateRequest req;
  c.mutate(&req);
  {
    grpc::ClientContext ctx;
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse msg;
    EXPECT_FALSE(reader->Read(&msg));
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.field));
  }
  {
    grpc::ClientContext ctx;
    v1::CompleteResponse resp;
    grpc::Status s = stub->Complete(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.field));
  }
}

TEST_F(ServingTest, EveryBadInputIsInvalidArgumentNamingTheField) {
  for (const BadCase& c : BadCases()) ExpectBadRequestRefused(stub_.get(), c);
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(ServingTest, BadRequestsDoNotDisturbAStreamInFlight) {
  FakeGenerationQueue::Script long_script = FakeGenerationQueue::TextScript(
      *tokenizer_, "the jury said it did find that the city was well run", FinishReason::kLength);
  long_script.gap = absl::Milliseconds(15);
  const size_t tokens = long_script.events.size() - 1;
  fake_.PushScript(long_script);

  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, TextRequest("The jury", 64));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  std::string text = msg.text();
  size_t ids = msg.token_ids_size();
  for (const BadCase& c : BadCases()) ExpectBadRequestRefused(stub_.get(), c);
  v1::GenerateResponse last;
  while (reader->Read(&msg)) {
    text += msg.text();
    ids += msg.token_ids_size();
    last = msg;
  }
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(ids, tokens);
  EXPECT_EQ(text, "the jury said it did find that the city was well run");
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(fake_.submitted().size(), 1u);
}

TEST_F(ServingTest, StreamsDeltasInOrderThenTheFinalMessage) {
  const std::string generated = "the grand jury, said Friday";
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, generated, FinishReason::kEos));
  v1::GenerateRequest req = TextRequest("The Fulton County", 32);
  req.set_model(kTestModel);
  req.set_temperature(0.5f);
  req.set_top_k(20);
  req.set_top_p(0.9f);
  req.set_seed(77);
  req.add_stop(std::string("\n\n"));
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(req, &msgs);
  ASSERT_TRUE(s.ok()) << s.error_message();

  const std::vector<int32_t> want_ids = tokenizer_->Encode(generated, false);
  ASSERT_GE(msgs.size(), 2u);
  std::vector<int32_t> ids;
  std::string text;
  for (size_t i = 0; i < msgs.size(); ++i) {
    ids.insert(ids.end(), msgs[i].token_ids().begin(), msgs[i].token_ids().end());
    text += msgs[i].text();
    if (i + 1 < msgs.size()) {
      EXPECT_EQ(msgs[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED) << i;
      EXPECT_EQ(msgs[i].token_ids_size(), 1) << i;
    }
  }
  EXPECT_EQ(ids, want_ids);
  EXPECT_EQ(text, generated);
  const std::vector<int32_t> prompt = tokenizer_->Encode("The Fulton County", true);
  EXPECT_EQ(msgs.back().finish_reason(), v1::FINISH_REASON_EOS);
  EXPECT_EQ(msgs.back().prompt_tokens(), static_cast<int>(prompt.size()));
  EXPECT_EQ(msgs.back().completion_tokens(), static_cast<int>(want_ids.size()));

  // The scheduler got the validated request.
  std::vector<GenerateRequest> sub = fake_.submitted();
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].prompt_ids, prompt);
  EXPECT_EQ(sub[0].prompt_ids.front(), tokenizer_->bos_id());
  EXPECT_EQ(sub[0].max_tokens, 32);
  EXPECT_FLOAT_EQ(sub[0].sampling.temperature, 0.5f);
  EXPECT_EQ(sub[0].sampling.top_k, 20);
  EXPECT_FLOAT_EQ(sub[0].sampling.top_p, 0.9f);
  EXPECT_EQ(sub[0].sampling.seed, 77u);
  EXPECT_EQ(sub[0].stop, std::vector<std::string>{"\n\n"});
}

TEST_F(ServingTest, TokenIdPromptsAndDefaultMaxTokens) {
  v1::GenerateRequest req;
  for (int id : {1, 100, 200}) req.add_token_ids(id);
  std::vector<v1::GenerateResponse> msgs;
  ASSERT_TRUE(ReadStream(req, &msgs).ok());
  std::vector<GenerateRequest> sub = fake_.submitted();
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].prompt_ids, (std::vector<int32_t>{1, 100, 200}));
  EXPECT_EQ(sub[0].max_tokens, 64);
}

TEST_F(ServingTest, CompleteReturnsTheWholeResult) {
  const std::string generated = "said it did find";
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, generated, FinishReason::kStop));
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  grpc::Status s = stub_->Complete(&ctx, TextRequest("The jury"), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.text(), generated);
  std::vector<int32_t> ids(resp.token_ids().begin(), resp.token_ids().end());
  EXPECT_EQ(ids, tokenizer_->Encode(generated, false));
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(resp.prompt_tokens(), static_cast<int>(tokenizer_->Encode("The jury", true).size()));
  EXPECT_EQ(resp.completion_tokens(), static_cast<int>(ids.size()));
}

TEST_F(ServingTest, QueueFullIsResourceExhausted) {
  fake_.SetSubmitError(absl::ResourceExhaustedError("request queue is full (256 waiting)"));
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("queue is full"));
  EXPECT_TRUE(msgs.empty());
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  s = stub_->Complete(&ctx, TextRequest("hi"), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);

  // Other Submit codes pass through too.
  fake_.SetSubmitError(absl::UnavailableError("server is draining"));
  msgs.clear();
  s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  fake_.SetSubmitError(absl::InvalidArgumentError("stop: too long for the scheduler"));
  grpc::ClientContext ctx2;
  s = stub_->Complete(&ctx2, TextRequest("hi"), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("stop"));
}

TEST_F(ServingTest, AFinalEventErrorEndsTheCallWithItsCode) {
  FakeGenerationQueue::Script failing =
      FakeGenerationQueue::TextScript(*tokenizer_, " the jury", FinishReason::kLength);
  failing.events.back().error = absl::UnavailableError("the executor failed: rank 3 died");
  fake_.PushScript(failing);
  fake_.PushScript(failing);
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("rank 3 died"));
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  s = stub_->Complete(&ctx, TextRequest("hi"), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);

  // A request the scheduler finished as cancelled (e.g. on Stop) is CANCELLED.
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, " x", FinishReason::kCancelled));
  msgs.clear();
  s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::CANCELLED);
}

TEST_F(ServingTest, ClientCancelMidStreamCancelsTheRequest) {
  FakeGenerationQueue::Script held =
      FakeGenerationQueue::TextScript(*tokenizer_, " the jury said", FinishReason::kLength);
  held.events.pop_back();  // no final event: generation goes on until cancelled
  held.hold_until_cancel = true;
  fake_.PushScript(held);

  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, TextRequest("The jury"));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(reader->Read(&msg));
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), StatusCode::CANCELLED);
  ASSERT_TRUE(fake_.WaitForCancels(1, absl::Seconds(10)));
  EXPECT_EQ(fake_.cancelled_ids(), std::vector<RequestId>{1});
  EXPECT_TRUE(fake_.WaitIdle(absl::Seconds(10)));
}

TEST_F(ServingTest, DeadlineMidStreamCancelsTheRequest) {
  FakeGenerationQueue::Script held =
      FakeGenerationQueue::TextScript(*tokenizer_, " the jury", FinishReason::kLength);
  held.events.pop_back();
  held.hold_until_cancel = true;
  fake_.PushScript(held);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  auto reader = stub_->Generate(&ctx, TextRequest("The jury"));
  v1::GenerateResponse msg;
  int got = 0;
  while (reader->Read(&msg)) ++got;
  EXPECT_GE(got, 1);
  EXPECT_EQ(reader->Finish().error_code(), StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(fake_.WaitForCancels(1, absl::Seconds(10)));
  EXPECT_EQ(fake_.cancelled_ids(), std::vector<RequestId>{1});
}

TEST_F(ServingTest, CompleteCancelledByDeadlineCancelsTheRequest) {
  FakeGenerationQueue::Script held;
  held.hold_until_cancel = true;
  fake_.PushScript(held);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  v1::CompleteResponse resp;
  grpc::Status s = stub_->Complete(&ctx, TextRequest("The jury"), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(fake_.WaitForCancels(1, absl::Seconds(10)));
}

TEST_F(ServingTest, OversizeRequestIsResourceExhausted) {
  v1::GenerateRequest req = TextRequest(std::string(5 << 20, 'a'));
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(req, &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(ServingTest, TextOverWhatTheContextHoldsIsRefusedBeforeTokenizing) {
  // Under the message limit, far over the context: every entry point refuses it by size.
  const std::string big(1 << 20, 'a');
  const std::string want = "text: 1048576 bytes; the model's context of 1024 tokens holds";
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(TextRequest(big), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), testing::StartsWith(want));
  grpc::ClientContext c1;
  v1::CompleteResponse cresp;
  s = stub_->Complete(&c1, TextRequest(big), &cresp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), testing::StartsWith(want));
  grpc::ClientContext c2;
  v1::TokenizeRequest treq;
  treq.set_text(big);
  v1::TokenizeResponse tresp;
  s = stub_->Tokenize(&c2, treq, &tresp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), testing::StartsWith(want));
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(ServingTest, MaxMessageBytesIsConfigurable) {
  ServingFrontEnd::Options o = DefaultOptions();
  o.max_message_bytes = 1024;
  StartServer(o);
  grpc::ClientContext ctx;
  v1::TokenizeRequest req;
  req.set_text(std::string(2000, 'a'));
  v1::TokenizeResponse resp;
  EXPECT_EQ(stub_->Tokenize(&ctx, req, &resp).error_code(), StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ServingTest, AFailedClusterIsNotServingAndRefusesNewWorkSayingWhy) {
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);
  front_->Fail(absl::UnavailableError("rank 2 (pid 7 on node07) has not answered for 5s"));
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
  front_->SetReady(true);  // a failure is for good
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(),
              HasSubstr("the cluster failed: rank 2 (pid 7 on node07) has not answered"));
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  s = stub_->Complete(&ctx, TextRequest("hi"), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("the cluster failed: rank 2"));
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(ServingTest, DrainingRefusesNewWorkButFinishesTheStreamInFlight) {
  FakeGenerationQueue::Script slow =
      FakeGenerationQueue::TextScript(*tokenizer_, " the jury said it", FinishReason::kLength);
  slow.gap = absl::Milliseconds(20);
  fake_.PushScript(slow);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, TextRequest("The jury"));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));

  front_->Drain();
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("server is draining"));
  grpc::ClientContext c2;
  v1::CompleteResponse resp;
  s = stub_->Complete(&c2, TextRequest("hi"), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("server is draining"));
  grpc::ClientContext c3;
  inference::ModelInferRequest infer;
  infer.set_model_name(kTestModel);
  auto* in = infer.add_inputs();
  in->set_name("text_input");
  in->set_datatype("BYTES");
  in->add_shape(1);
  in->mutable_contents()->add_bytes_contents("hi");
  inference::ModelInferResponse infer_resp;
  s = kserve_->ModelInfer(&c3, infer, &infer_resp);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("server is draining"));

  // Draining is reported; other RPCs still work.
  grpc::ClientContext c4;
  v1::GetClusterStatusResponse status;
  ASSERT_TRUE(stub_->GetClusterStatus(&c4, {}, &status).ok());
  EXPECT_TRUE(status.scheduler().draining());

  while (reader->Read(&msg)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(fake_.submitted().size(), 1u);
}

TEST_F(ServingTest, GenerationWaitsForReady) {
  StartServer(DefaultOptions(), /*ready=*/false);
  std::vector<v1::GenerateResponse> msgs;
  grpc::Status s = ReadStream(TextRequest("hi"), &msgs);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("not ready"));
  front_->SetReady(true);
  msgs.clear();
  EXPECT_TRUE(ReadStream(TextRequest("hi"), &msgs).ok());
}

TEST_F(ServingTest, HealthGoesNotServingServingNotServing) {
  StartServer(DefaultOptions(), /*ready=*/false);
  const std::vector<std::string> services = {"", "switchyard.v1.Switchyard",
                                             "inference.GRPCInferenceService"};
  for (const auto& svc : services) EXPECT_EQ(Health(svc), HealthCheckResponse::NOT_SERVING) << svc;
  front_->SetReady(true);
  for (const auto& svc : services) EXPECT_EQ(Health(svc), HealthCheckResponse::SERVING) << svc;
  front_->SetReady(false);
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
  front_->SetReady(true);
  front_->Drain();
  for (const auto& svc : services) EXPECT_EQ(Health(svc), HealthCheckResponse::NOT_SERVING) << svc;
  front_->SetReady(true);  // draining wins
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);

  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse resp;
  EXPECT_EQ(health_->Check(&ctx, req, &resp).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServingTest, ReflectionListsTheServices) {
  std::vector<std::string> services;
  grpc::Status s = ListServicesByReflection(channel_, &services);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_THAT(services,
              testing::IsSupersetOf({"switchyard.v1.Switchyard", "inference.GRPCInferenceService",
                                     "grpc.health.v1.Health"}));
}

TEST_F(ServingTest, TokenizeDetokenizeRoundTrip) {
  grpc::ClientContext c1;
  v1::TokenizeRequest treq;
  treq.set_text("The jury further said");
  v1::TokenizeResponse tresp;
  ASSERT_TRUE(stub_->Tokenize(&c1, treq, &tresp).ok());
  std::vector<int32_t> ids(tresp.token_ids().begin(), tresp.token_ids().end());
  EXPECT_EQ(ids, tokenizer_->Encode("The jury further said", true));

  grpc::ClientContext c2;
  treq.set_add_bos(false);
  ASSERT_TRUE(stub_->Tokenize(&c2, treq, &tresp).ok());
  EXPECT_NE(tresp.token_ids(0), tokenizer_->bos_id());

  grpc::ClientContext c3;
  v1::DetokenizeRequest dreq;
  dreq.mutable_token_ids()->Add(ids.begin(), ids.end());
  v1::DetokenizeResponse dresp;
  ASSERT_TRUE(stub_->Detokenize(&c3, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), "The jury further said");

  grpc::ClientContext c4;
  dreq.add_token_ids(99999);
  grpc::Status s = stub_->Detokenize(&c4, dreq, &dresp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("token_ids[" + std::to_string(ids.size()) + "]"));
}

TEST_F(ServingTest, GetModelInfo) {
  grpc::ClientContext ctx;
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.name(), kTestModel);
  EXPECT_EQ(info.config().model_type(), "mixtral");
  EXPECT_EQ(info.config().hidden_size(), 256);
  EXPECT_EQ(info.config().intermediate_size(), 512);
  EXPECT_EQ(info.config().num_hidden_layers(), 4);
  EXPECT_EQ(info.config().num_attention_heads(), 8);
  EXPECT_EQ(info.config().num_key_value_heads(), 2);
  EXPECT_EQ(info.config().head_dim(), 32);
  EXPECT_EQ(info.config().num_local_experts(), 8);
  EXPECT_EQ(info.config().num_experts_per_tok(), 2);
  EXPECT_EQ(info.config().vocab_size(), 4096);
  EXPECT_EQ(info.config().max_position_embeddings(), 1024);
  EXPECT_DOUBLE_EQ(info.config().rope_theta(), 1e6);
  EXPECT_EQ(info.config().bos_token_id(), 1);
  EXPECT_EQ(info.config().eos_token_id(), 2);
  EXPECT_EQ(info.parameters().total(), config_->TotalParams());
  EXPECT_EQ(info.parameters().active_per_token(), config_->ActiveParamsPerToken());
  EXPECT_EQ(info.parameters().per_layer(), config_->LayerParams());
  EXPECT_EQ(info.parameters().per_expert(), config_->ExpertParams());
  EXPECT_EQ(info.parameters().attention_per_layer(), config_->AttentionParamsPerLayer());
  EXPECT_EQ(info.max_context(), 1024);
  EXPECT_EQ(info.ep(), 2);
  EXPECT_EQ(info.pp(), 1);
  EXPECT_EQ(info.world_size(), 2);
}

TEST_F(ServingTest, GetClusterStatus) {
  SchedulerStats stats;
  stats.steps = 31;
  stats.running = 3;
  stats.waiting = 5;
  stats.free_blocks = {10, 12};
  stats.total_blocks = {64, 64};
  stats.generated_tokens = 400;
  stats.prompt_tokens = 900;
  fake_.SetStats(stats);
  grpc::ClientContext ctx;
  v1::GetClusterStatusResponse st;
  ASSERT_TRUE(stub_->GetClusterStatus(&ctx, {}, &st).ok());
  EXPECT_EQ(st.ep(), 2);
  EXPECT_EQ(st.pp(), 1);
  EXPECT_EQ(st.world_size(), 2);
  ASSERT_EQ(st.ranks_size(), 2);
  const v1::RankStatus& r1 = st.ranks(1);
  EXPECT_EQ(r1.world_rank(), 1);
  EXPECT_EQ(r1.stage(), 0);
  EXPECT_EQ(r1.ep_rank(), 1);
  EXPECT_EQ(r1.layer_begin(), 0);
  EXPECT_EQ(r1.layer_end(), 4);
  ASSERT_EQ(r1.experts_size(), 4);
  EXPECT_THAT(r1.experts(0).ids(), testing::ElementsAre(1, 3));
  EXPECT_THAT(r1.experts(1).ids(), testing::ElementsAre(5));
  EXPECT_TRUE(r1.experts(2).ids().empty());
  EXPECT_EQ(r1.weight_bytes(), 1001);
  EXPECT_EQ(r1.kv_bytes(), 2001);
  EXPECT_EQ(r1.steps(), 31);
  EXPECT_EQ(r1.compute_seconds(), 2.25);
  EXPECT_EQ(r1.wait_seconds(), 1.5);
  EXPECT_THAT(r1.dispatch_bytes_sent(), testing::ElementsAre(700, 0));
  EXPECT_THAT(st.ranks(0).dispatch_bytes_sent(), testing::ElementsAre(0, 800));
  ASSERT_EQ(st.expert_token_counts_size(), 2);
  EXPECT_THAT(st.expert_token_counts(0).tokens(), testing::ElementsAre(1, 2, 3, 4, 5, 6, 7, 8));
  EXPECT_EQ(st.expert_token_counts(1).tokens(7), 9);
  EXPECT_EQ(st.scheduler().running(), 3);
  EXPECT_EQ(st.scheduler().waiting(), 5);
  EXPECT_THAT(st.scheduler().free_kv_blocks(), testing::ElementsAre(10, 12));
  EXPECT_THAT(st.scheduler().total_kv_blocks(), testing::ElementsAre(64, 64));
  EXPECT_EQ(st.scheduler().steps(), 31);
  EXPECT_EQ(st.scheduler().generated_tokens(), 400);
  EXPECT_EQ(st.scheduler().prompt_tokens(), 900);
  EXPECT_FALSE(st.scheduler().draining());
  EXPECT_FALSE(st.scheduler().failed());
}

class AuthTest : public ServingTest {
 protected:
  void SetUp() override {
    ServingFrontEnd::Options o = DefaultOptions();
    o.auth_token = "s3cret-token";
    StartServer(o);
  }

  static void SetToken(grpc::ClientContext* ctx, const std::string& value) {
    if (!value.empty()) ctx->AddMetadata("authorization", value);
  }

  grpc::Status Generate(const std::string& auth) {
    grpc::ClientContext ctx;
    SetToken(&ctx, auth);
    auto reader = stub_->Generate(&ctx, TextRequest("hi"));
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    return reader->Finish();
  }

  grpc::Status ModelInfer(const std::string& auth) {
    grpc::ClientContext ctx;
    SetToken(&ctx, auth);
    inference::ModelInferRequest req;
    auto* in = req.add_inputs();
    in->set_name("text_input");
    in->set_datatype("BYTES");
    in->add_shape(1);
    in->mutable_contents()->add_bytes_contents("hi");
    inference::ModelInferResponse resp;
    return kserve_->ModelInfer(&ctx, req, &resp);
  }
};

TEST_F(ServingTest, BytesThatDoNotParseAreInvalidArgumentNamingTheType) {
  testing::internal::CaptureStderr();
  // Garbage, and field 2 (text) holding bytes that are not UTF-8.
  for (const std::string& body : {std::string("\xff\xff\xff"), std::string("\x12\x02\xc3\x28")}) {
    grpc::Status s = GenericUnaryCall(channel_, "/switchyard.v1.Switchyard/Complete", body);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                testing::StartsWith("request: the bytes do not parse as switchyard.v1.GenerateRequest"));
    s = GenericUnaryCall(channel_, "/inference.GRPCInferenceService/ModelInfer", body);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("inference.ModelInferRequest"));
  }
  // No line in the log per malformed request.
  EXPECT_THAT(testing::internal::GetCapturedStderr(), testing::Not(HasSubstr("libprotobuf")));
  grpc::Status s = GenericUnaryCall(channel_, "/switchyard.v1.Switchyard/NoSuchMethod", "");
  EXPECT_EQ(s.error_code(), StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(s.error_message(), "unknown method /switchyard.v1.Switchyard/NoSuchMethod");
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(ServingTest, RequestIdsAreKeptOrMadeAndEveryCallIsLogged) {
  InitLogging(0);  // stderr, as the binary logs
  testing::internal::CaptureStderr();
  grpc::ClientContext c1;
  c1.AddMetadata("x-request-id", "client-chosen-7");
  v1::CompleteResponse resp;
  ASSERT_TRUE(stub_->Complete(&c1, TextRequest("The jury"), &resp).ok());
  auto id1 = c1.GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(id1, c1.GetServerInitialMetadata().end());
  EXPECT_EQ(std::string(id1->second.data(), id1->second.size()), "client-chosen-7");

  // No id (or an unusable one): the server makes one, also for a refused call.
  grpc::ClientContext c2;
  c2.AddMetadata("x-request-id", std::string(200, 'x'));
  EXPECT_FALSE(stub_->Complete(&c2, TextRequest(""), &resp).ok());
  auto id2 = c2.GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(id2, c2.GetServerInitialMetadata().end());
  const std::string made(id2->second.data(), id2->second.size());
  EXPECT_THAT(made, testing::MatchesRegex("[0-9a-f]{16}-[0-9a-f]+"));

  grpc::ClientContext c3;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health_->Check(&c3, {}, &hresp).ok());
  const std::string log = testing::internal::GetCapturedStderr();
  const size_t at = log.find("rank 0 info: access: id=client-chosen-7 peer=ipv");
  ASSERT_NE(at, std::string::npos) << log;
  const std::string line = log.substr(at, log.find('\n', at) - at);
  for (const char* part : {" method=switchyard.v1.Switchyard/Complete status=OK prompt_tokens=",
                           " completion_tokens=", " first_response_ms=", " total_ms="}) {
    EXPECT_THAT(line, HasSubstr(part));
  }
  EXPECT_THAT(log, HasSubstr("access: id=" + made));
  EXPECT_THAT(log, HasSubstr("status=INVALID_ARGUMENT"));
  EXPECT_THAT(log, testing::Not(HasSubstr("grpc.health")));  // probes are not logged
}

TEST_F(AuthTest, BytesThatDoNotParseAreUnauthenticatedWithoutAToken) {
  grpc::Status s = GenericUnaryCall(channel_, "/switchyard.v1.Switchyard/Complete", "\xff\xff");
  EXPECT_EQ(s.error_code(), StatusCode::UNAUTHENTICATED);
}

TEST_F(AuthTest, MissingOrWrongTokenIsUnauthenticated) {
  for (const std::string& bad :
       {std::string(), std::string("Bearer wrong"), std::string("Bearer s3cret-token-x"),
        std::string("s3cret-token"), std::string("Basic s3cret-token")}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(Generate(bad).error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(ModelInfer(bad).error_code(), StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext c1;
  v1::TokenizeResponse tresp;
  EXPECT_EQ(stub_->Tokenize(&c1, {}, &tresp).error_code(), StatusCode::UNAUTHENTICATED);
  grpc::ClientContext c2;
  inference::ServerLiveResponse live;
  EXPECT_EQ(kserve_->ServerLive(&c2, {}, &live).error_code(), StatusCode::UNAUTHENTICATED);
  grpc::ClientContext c3;
  inference::RepositoryModelLoadResponse load;
  EXPECT_EQ(kserve_->RepositoryModelLoad(&c3, {}, &load).error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(AuthTest, CorrectTokenWorks) {
  EXPECT_TRUE(Generate("Bearer s3cret-token").ok());
  EXPECT_TRUE(ModelInfer("Bearer s3cret-token").ok());
  EXPECT_TRUE(ModelInfer("bearer s3cret-token").ok());  // the scheme is case-insensitive
  EXPECT_EQ(fake_.submitted().size(), 3u);
}

TEST_F(AuthTest, HealthNeedsNoTokenAndReflectionIsOffUnlessExposed) {
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("switchyard.v1.Switchyard"), HealthCheckResponse::SERVING);
  // Reflection cannot check the token: with auth on it is not served...
  std::vector<std::string> services;
  grpc::Status s = ListServicesByReflection(channel_, &services);
  EXPECT_EQ(s.error_code(), StatusCode::UNIMPLEMENTED) << s.error_message();
  EXPECT_THAT(s.error_message(), testing::StartsWith("unknown method /grpc.reflection."));
  EXPECT_THAT(s.error_message(), HasSubstr("serve with --expose-reflection"));
  // ...unless exposed on purpose.
  ServingFrontEnd::Options o = DefaultOptions();
  o.auth_token = "s3cret-token";
  o.expose_reflection = true;
  StartServer(o);
  services.clear();
  EXPECT_TRUE(ListServicesByReflection(channel_, &services).ok());
  EXPECT_FALSE(services.empty());
}

TEST_F(ServingTest, MutualTlsNeedsAClientCertificateFromTheCa) {
  const std::string dir = kTestRoot + "/coordinator/server/testdata/";
  ServingFrontEnd::Options o = DefaultOptions();
  o.tls_cert = dir + "server.crt";
  o.tls_key = dir + "server.key";
  o.tls_client_ca = dir + "server.crt";  // self-signed (CA:TRUE): it signs itself
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  grpc::SslCredentialsOptions with_cert;
  with_cert.pem_root_certs = read(dir + "server.crt");
  with_cert.pem_cert_chain = read(dir + "server.crt");
  with_cert.pem_private_key = read(dir + "server.key");
  StartServer(o, true, grpc::SslCredentials(with_cert), "localhost");
  grpc::ClientContext c1;
  v1::TokenizeRequest req;
  req.set_text("jury");
  v1::TokenizeResponse resp;
  grpc::Status s = stub_->Tokenize(&c1, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();

  // The same server, a client without a certificate: the handshake fails.
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = read(dir + "server.crt");
  grpc::ChannelArguments args;
  auto anonymous = v1::Switchyard::NewStub(grpc::CreateCustomChannel(
      "localhost:" + std::to_string(front_->bound_port()), grpc::SslCredentials(no_cert), args));
  grpc::ClientContext c2;
  c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_FALSE(anonymous->Tokenize(&c2, req, &resp).ok());
}

TEST_F(ServingTest, TlsWithTokenServes) {
  const std::string dir = kTestRoot + "/coordinator/server/testdata/";
  ServingFrontEnd::Options o = DefaultOptions();
  o.tls_cert = dir + "server.crt";
  o.tls_key = dir + "server.key";
  o.auth_token = "tls-token";
  std::ifstream in(dir + "server.crt");
  std::stringstream cert;
  cert << in.rdbuf();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = cert.str();
  StartServer(o, true, grpc::SslCredentials(ssl), "localhost");

  grpc::ClientContext c1;
  c1.AddMetadata("authorization", "Bearer tls-token");
  v1::TokenizeRequest req;
  req.set_text("jury");
  v1::TokenizeResponse resp;
  grpc::Status s = stub_->Tokenize(&c1, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(resp.token_ids_size(), 1);

  // A plaintext client cannot talk to the TLS port.
  auto plain = v1::Switchyard::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(front_->bound_port()), grpc::InsecureChannelCredentials()));
  grpc::ClientContext c2;
  c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  c2.AddMetadata("authorization", "Bearer tls-token");
  EXPECT_FALSE(plain->Tokenize(&c2, req, &resp).ok());
}

TEST(CheckTlsFiles, NamesTheFileAndTheProblem) {
  const std::string dir = kTestRoot + "/coordinator/server/testdata/";
  EXPECT_TRUE(CheckTlsFiles(dir + "server.crt", dir + "server.key").ok());
  EXPECT_TRUE(CheckTlsFiles("", "").ok());
  absl::Status s = CheckTlsFiles(dir + "server.crt", dir + "other.key", "--tls-cert", "--tls-key");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              testing::StartsWith("--tls-key: the private key in " + dir + "other.key" +
                                  " does not match the certificate in " + dir + "server.crt"));
  s = CheckTlsFiles(dir + "server.crt", "", "--tls-cert", "--tls-key");
  EXPECT_EQ(std::string(s.message()), "--tls-cert and --tls-key: give both PEM files, or neither");
  s = CheckTlsFiles(dir + "server.crt", dir + "server.crt", "--tls-cert", "--tls-key");
  EXPECT_THAT(std::string(s.message()), HasSubstr("--tls-key: " + dir + "server.crt holds no PEM"));
  s = CheckTlsFiles(dir + "server.key", dir + "server.key", "--tls-cert", "--tls-key");
  EXPECT_THAT(std::string(s.message()), HasSubstr("holds no PEM certificate"));
  s = CheckTlsFiles(dir + "missing.crt", dir + "server.key", "--tls-cert", "--tls-key");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--tls-cert: cannot read"));
}

TEST_F(ServingTest, AKeyThatDoesNotMatchIsNotReportedAsAnAddressInUse) {
  ServingFrontEnd::Options o = DefaultOptions();
  o.tls_cert = kTestRoot + "/coordinator/server/testdata/server.crt";
  o.tls_key = kTestRoot + "/coordinator/server/testdata/other.key";
  ServingFrontEnd front(&fake_, tokenizer_, *config_, nullptr, {}, o);
  absl::Status s = front.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("does not match the certificate"));
}

TEST_F(ServingTest, StartErrorsNameTheProblem) {
  ServingFrontEnd::Options o = DefaultOptions();
  o.listen = "127.0.0.1:" + std::to_string(front_->bound_port());  // in use
  ServingFrontEnd second(&fake_, tokenizer_, *config_, nullptr, {}, o);
  absl::Status s = second.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(o.listen));

  o = DefaultOptions();
  o.listen = "not an address";
  ServingFrontEnd bad(&fake_, tokenizer_, *config_, nullptr, {}, o);
  s = bad.Start();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("not an address"));

  o = DefaultOptions();
  o.tls_cert = "/nonexistent/cert.pem";
  ServingFrontEnd half_tls(&fake_, tokenizer_, *config_, nullptr, {}, o);
  s = half_tls.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("tls_key"));

  o.tls_key = "/nonexistent/key.pem";
  ServingFrontEnd missing(&fake_, tokenizer_, *config_, nullptr, {}, o);
  s = missing.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("/nonexistent/cert.pem"));

  o = DefaultOptions();
  o.model_name = "";
  ServingFrontEnd unnamed(&fake_, tokenizer_, *config_, nullptr, {}, o);
  EXPECT_THAT(std::string(unnamed.Start().message()), HasSubstr("model_name"));

  EXPECT_EQ(front_->Start().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ServingTest, ShutdownCancelsStreamsInFlight) {
  FakeGenerationQueue::Script held =
      FakeGenerationQueue::TextScript(*tokenizer_, " the jury", FinishReason::kLength);
  held.events.pop_back();
  held.hold_until_cancel = true;
  fake_.PushScript(held);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, TextRequest("The jury"));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  front_->Shutdown(absl::Now() + absl::Milliseconds(200));
  while (reader->Read(&msg)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_TRUE(fake_.WaitForCancels(1, absl::Seconds(10)));
  front_->Shutdown(absl::Now());  // idempotent
}

TEST_F(ServingTest, ManyConcurrentStreams) {
  constexpr int kStreams = 16;
  for (int i = 0; i < kStreams; ++i) {
    fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, "the jury said it did",
                                                     FinishReason::kLength));
  }
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&] {
      std::vector<v1::GenerateResponse> msgs;
      std::string text;
      grpc::Status s = ReadStream(TextRequest("The jury"), &msgs);
      for (const auto& m : msgs) text += m.text();
      if (s.ok() && text == "the jury said it did") ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kStreams);
}

}  // namespace
}  // namespace switchyard
