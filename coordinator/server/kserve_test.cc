// The KServe v2 (Open Inference Protocol) service over real gRPC.
#include "coordinator/server/kserve_request.h"
#include "coordinator/server/serving_test_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using grpc::StatusCode;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using testing::HasSubstr;

std::string RawBytesElement(const std::string& s) {
  const uint32_t n = static_cast<uint32_t>(s.size());
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + s;
}

ModelInferRequest TextInfer(const std::string& prompt) {
  ModelInferRequest req;
  req.set_model_name(kTestModel);
  req.set_id("req-7");
  auto* in = req.add_inputs();
  in->set_name("text_input");
  in->set_datatype("BYTES");
  in->add_shape(1);
  in->mutable_contents()->add_bytes_contents(prompt);
  return req;
}

class KServeTest : public ServingTest {
 protected:
  grpc::Status Infer(const ModelInferRequest& req, ModelInferResponse* resp) {
    grpc::ClientContext ctx;
    return kserve_->ModelInfer(&ctx, req, resp);
  }
};

TEST_F(KServeTest, LivenessReadinessAndMetadata) {
  grpc::ClientContext c1;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(kserve_->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());

  grpc::ClientContext c2;
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(kserve_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_TRUE(ready.ready());

  grpc::ClientContext c3;
  inference::ModelReadyRequest mr;
  mr.set_name(kTestModel);
  inference::ModelReadyResponse mready;
  ASSERT_TRUE(kserve_->ModelReady(&c3, mr, &mready).ok());
  EXPECT_TRUE(mready.ready());
  grpc::ClientContext c4;
  mr.set_name("other-model");
  grpc::Status unknown = kserve_->ModelReady(&c4, mr, &mready);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.error_message(), testing::StartsWith("name: unknown model \"other-model\""));

  grpc::ClientContext c5;
  inference::ServerMetadataResponse sm;
  ASSERT_TRUE(kserve_->ServerMetadata(&c5, {}, &sm).ok());
  EXPECT_EQ(sm.name(), "switchyard");
  EXPECT_FALSE(sm.version().empty());
  EXPECT_EQ(sm.extensions_size(), 0);

  grpc::ClientContext c6;
  inference::ModelMetadataRequest mm;
  mm.set_name(kTestModel);
  inference::ModelMetadataResponse meta;
  ASSERT_TRUE(kserve_->ModelMetadata(&c6, mm, &meta).ok());
  EXPECT_EQ(meta.name(), kTestModel);
  EXPECT_EQ(meta.platform(), "switchyard");
  EXPECT_THAT(meta.versions(), testing::ElementsAre("1"));
  ASSERT_EQ(meta.inputs_size(), 1);
  EXPECT_EQ(meta.inputs(0).name(), "text_input");
  EXPECT_EQ(meta.inputs(0).datatype(), "BYTES");
  EXPECT_THAT(meta.inputs(0).shape(), testing::ElementsAre(1));
  ASSERT_EQ(meta.outputs_size(), 1);
  EXPECT_EQ(meta.outputs(0).name(), "text_output");
  EXPECT_EQ(meta.outputs(0).datatype(), "BYTES");
  EXPECT_THAT(meta.outputs(0).shape(), testing::ElementsAre(1));

  grpc::ClientContext c7;
  mm.set_name("other-model");
  EXPECT_EQ(kserve_->ModelMetadata(&c7, mm, &meta).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(KServeTest, ReadinessFollowsHealth) {
  StartServer(DefaultOptions(), /*ready=*/false);
  grpc::ClientContext c1;
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(kserve_->ServerReady(&c1, {}, &ready).ok());
  EXPECT_FALSE(ready.ready());
  front_->SetReady(true);
  front_->Drain();
  grpc::ClientContext c2;
  ASSERT_TRUE(kserve_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_FALSE(ready.ready());
  grpc::ClientContext c3;
  inference::ModelReadyRequest mr;
  mr.set_name(kTestModel);
  inference::ModelReadyResponse mready;
  ASSERT_TRUE(kserve_->ModelReady(&c3, mr, &mready).ok());
  EXPECT_FALSE(mready.ready());
}

TEST_F(KServeTest, ModelInferWithBytesContents) {
  const std::string generated = "the grand jury";
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, generated, FinishReason::kEos));
  ModelInferRequest req = TextInfer("The Fulton County");
  auto& params = *req.mutable_parameters();
  params["max_tokens"].set_int64_param(12);
  params["temperature"].set_double_param(0.25);
  params["top_k"].set_int64_param(5);
  params["top_p"].set_double_param(0.5);
  params["seed"].set_uint64_param(99);
  params["stop"].set_string_param("\n");
  req.add_outputs()->set_name("text_output");
  ModelInferResponse resp;
  grpc::Status s = Infer(req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();

  EXPECT_EQ(resp.model_name(), kTestModel);
  EXPECT_EQ(resp.id(), "req-7");
  ASSERT_EQ(resp.outputs_size(), 1);
  EXPECT_EQ(resp.outputs(0).name(), "text_output");
  EXPECT_EQ(resp.outputs(0).datatype(), "BYTES");
  EXPECT_THAT(resp.outputs(0).shape(), testing::ElementsAre(1));
  EXPECT_THAT(resp.outputs(0).contents().bytes_contents(), testing::ElementsAre(generated));
  EXPECT_EQ(resp.raw_output_contents_size(), 0);
  EXPECT_EQ(resp.parameters().at("finish_reason").string_param(), "eos");
  EXPECT_EQ(resp.parameters().at("completion_tokens").int64_param(),
            static_cast<int64_t>(tokenizer_->Encode(generated, false).size()));

  std::vector<GenerateRequest> sub = fake_.submitted();
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].prompt_ids, tokenizer_->Encode("The Fulton County", true));
  EXPECT_EQ(sub[0].max_tokens, 12);
  EXPECT_FLOAT_EQ(sub[0].sampling.temperature, 0.25f);
  EXPECT_EQ(sub[0].sampling.top_k, 5);
  EXPECT_FLOAT_EQ(sub[0].sampling.top_p, 0.5f);
  EXPECT_EQ(sub[0].sampling.seed, 99u);
  EXPECT_EQ(sub[0].stop, std::vector<std::string>{"\n"});
}

TEST_F(KServeTest, ModelInferWithRawInputContents) {
  fake_.PushScript(FakeGenerationQueue::TextScript(*tokenizer_, "said", FinishReason::kLength));
  ModelInferRequest req = TextInfer("");
  req.mutable_inputs(0)->clear_contents();
  req.add_raw_input_contents(RawBytesElement("The jury"));
  (*req.mutable_parameters())["max_tokens"].set_int64_param(1);
  ModelInferResponse resp;
  grpc::Status s = Infer(req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.outputs_size(), 1);
  EXPECT_THAT(resp.outputs(0).contents().bytes_contents(), testing::ElementsAre("said"));
  std::vector<GenerateRequest> sub = fake_.submitted();
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].prompt_ids, tokenizer_->Encode("The jury", true));
  EXPECT_EQ(sub[0].max_tokens, 1);
}

TEST_F(KServeTest, BadRequestsAreInvalidArgumentNamingTheField) {
  using Mutation = std::function<void(ModelInferRequest*)>;
  auto param = [](const char* name, auto set) -> Mutation {
    return [=](ModelInferRequest* r) { set(&(*r->mutable_parameters())[name]); };
  };
  const std::vector<std::pair<Mutation, std::string>> cases = {
      {param("max_tokens", [](auto* p) { p->set_string_param("ten"); }), "max_tokens"},
      {param("max_tokens", [](auto* p) { p->set_int64_param(0); }), "max_tokens"},
      {param("max_tokens", [](auto* p) { p->set_int64_param(5000); }), "max_tokens"},
      {param("temperature", [](auto* p) { p->set_double_param(-1); }), "temperature"},
      {param("temperature", [](auto* p) { p->set_bool_param(true); }), "temperature"},
      {param("top_p", [](auto* p) { p->set_double_param(2); }), "top_p"},
      {param("top_k", [](auto* p) { p->set_int64_param(-2); }), "top_k"},
      {param("top_k", [](auto* p) { p->set_double_param(3.5); }), "top_k"},
      {param("seed", [](auto* p) { p->set_int64_param(-1); }), "seed"},
      {param("stop", [](auto* p) { p->set_int64_param(3); }), "stop"},
      {param("stop", [](auto* p) { p->set_string_param(""); }), "stop[0]"},
      {param("frobnicate", [](auto* p) { p->set_bool_param(true); }), "frobnicate"},
      {[](ModelInferRequest* r) { r->set_model_name("other-model"); }, "model_name"},
      {[](ModelInferRequest* r) { r->set_model_version("7"); }, "model_version"},
      {[](ModelInferRequest* r) { r->clear_inputs(); }, "inputs"},
      {[](ModelInferRequest* r) { r->mutable_inputs(0)->set_name("prompt"); }, "inputs[0].name"},
      {[](ModelInferRequest* r) { r->mutable_inputs(0)->set_datatype("FP32"); }, "text_input"},
      {[](ModelInferRequest* r) { r->mutable_inputs(0)->set_shape(0, 2); }, "text_input"},
      {[](ModelInferRequest* r) {
         r->mutable_inputs(0)->mutable_contents()->set_bytes_contents(0, "");
       },
       "text_input"},
      {[](ModelInferRequest* r) { r->add_raw_input_contents(RawBytesElement("x")); }, "text_input"},
      {[](ModelInferRequest* r) {
         r->mutable_inputs(0)->clear_contents();
         r->add_raw_input_contents(std::string("\x05\x00\x00\x00", 4) + "abc");
       },
       "raw_input_contents[0]"},
      {[](ModelInferRequest* r) { r->add_outputs()->set_name("logits"); }, "outputs[0].name"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].second + " case " + std::to_string(i));
    ModelInferRequest req = TextInfer("The jury");
    cases[i].first(&req);
    ModelInferResponse resp;
    grpc::Status s = Infer(req, &resp);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(cases[i].second));
  }
  EXPECT_TRUE(fake_.submitted().empty());
}

// Refusals of the prompt name KServe's input, text_input, never switchyard.v1's `text`.
TEST_F(KServeTest, PromptRefusalsNameTheInputTextInput) {
  ModelInferResponse resp;
  // Not UTF-8 (0xc3 starts a two-byte character; '(' cannot continue it).
  grpc::Status s = Infer(TextInfer(std::string("caf\xc3(", 5)), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(),
            "text_input: the prompt is not valid UTF-8 (at byte 3 of 5); send text as UTF-8");
  // Longer than the context can hold, refused before tokenizing.
  const int64_t limit =
      int64_t{config_->max_position_embeddings} * tokenizer_->max_piece_bytes();
  s = Infer(TextInfer(std::string(limit + 1, 'a')), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              testing::StartsWith(absl::StrCat("text_input: ", limit + 1, " bytes; the model's")));
  // Fills the context once tokenized (within the byte bound).
  std::string words;
  while (words.size() < 4 * static_cast<size_t>(config_->max_position_embeddings)) words += " jury";
  s = Infer(TextInfer(words), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), testing::StartsWith("text_input: "));
  EXPECT_TRUE(fake_.submitted().empty());
}

TEST_F(KServeTest, UnsupportedRpcsAreUnimplemented) {
  grpc::ClientContext c1;
  inference::RepositoryModelLoadRequest load;
  load.set_model_name(kTestModel);
  inference::RepositoryModelLoadResponse load_resp;
  EXPECT_EQ(kserve_->RepositoryModelLoad(&c1, load, &load_resp).error_code(),
            StatusCode::UNIMPLEMENTED);
  grpc::ClientContext c2;
  inference::RepositoryModelUnloadResponse unload_resp;
  EXPECT_EQ(kserve_->RepositoryModelUnload(&c2, {}, &unload_resp).error_code(),
            StatusCode::UNIMPLEMENTED);
  // Triton's extensions of the same service are not registered at all.
  for (const char* method :
       {"RepositoryIndex", "ModelStatistics", "ModelConfig", "ModelStreamInfer",
        "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "SystemSharedMemoryStatus",
        "SystemSharedMemoryUnregister", "TraceSetting", "LogSettings"}) {
    SCOPED_TRACE(method);
    grpc::Status s =
        GenericUnaryCall(channel_, std::string("/inference.GRPCInferenceService/") + method, "");
    EXPECT_EQ(s.error_code(), StatusCode::UNIMPLEMENTED) << s.error_message();
  }
}

// What the generated base class answers for a method a service does not override.
TEST(KServeGeneratedBase, UnoverriddenMethodsAreUnimplemented) {
  inference::GRPCInferenceService::CallbackService bare;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&bare);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext c1;
  ModelInferResponse resp;
  EXPECT_EQ(stub->ModelInfer(&c1, TextInfer("x"), &resp).error_code(), StatusCode::UNIMPLEMENTED);
  grpc::ClientContext c2;
  inference::RepositoryModelLoadResponse load_resp;
  EXPECT_EQ(stub->RepositoryModelLoad(&c2, {}, &load_resp).error_code(), StatusCode::UNIMPLEMENTED);
  server->Shutdown();
}

TEST(KServeRequest, DecodeRawBytesElement) {
  auto ok = DecodeRawBytesElement(RawBytesElement("héllo"), "f");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "héllo");
  EXPECT_EQ(*DecodeRawBytesElement(RawBytesElement(""), "f"), "");
  EXPECT_FALSE(DecodeRawBytesElement("abc", "f").ok());
  auto two = DecodeRawBytesElement(RawBytesElement("a") + RawBytesElement("b"), "raw[0]");
  EXPECT_EQ(two.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(two.status().message()), HasSubstr("raw[0]"));
}

}  // namespace
}  // namespace switchyard
