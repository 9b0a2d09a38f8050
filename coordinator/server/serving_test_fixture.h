// Test fixture: a real ServingFrontEnd on 127.0.0.1:0 over a FakeGenerationQueue, with the
// brown-moe tokenizer and config, and generated stubs for every service.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <future>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/server/fake_generation_queue.h"
#include "coordinator/server/front_end.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "kserve/grpc_predict_v2.grpc.pb.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "switchyard/v1/switchyard.grpc.pb.h"

namespace switchyard {

inline const std::string kTestRoot = SWITCHYARD_SOURCE_ROOT;
inline constexpr char kTestModel[] = "brown-moe";

// Calls a unary method by name with a serialized request; returns the status.
inline grpc::Status GenericUnaryCall(const std::shared_ptr<grpc::Channel>& channel,
                                     const std::string& method, const std::string& request) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1);
  grpc::ByteBuffer resp;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  return done.get_future().get();
}

// Lists the services through the server reflection service (v1alpha), using the
// descriptors that libgrpc++_reflection registers, over a generic bidi call.
inline grpc::Status ListServicesByReflection(const std::shared_ptr<grpc::Channel>& channel,
                                             std::vector<std::string>* services) {
  namespace pb = google::protobuf;
  const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
  const pb::Descriptor* req_type =
      pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionRequest");
  const pb::Descriptor* resp_type =
      pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionResponse");
  if (req_type == nullptr || resp_type == nullptr) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "reflection descriptors are not linked");
  }
  pb::DynamicMessageFactory factory(pool);
  std::unique_ptr<pb::Message> req(factory.GetPrototype(req_type)->New());
  req->GetReflection()->SetString(req.get(), req_type->FindFieldByName("list_services"), "");
  std::string bytes;
  req->SerializeToString(&bytes);

  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  grpc::CompletionQueue cq;
  auto next = [&cq](intptr_t want) {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && reinterpret_cast<intptr_t>(tag) == want && ok;
  };
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  bool ok = next(1);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer buf(&slice, 1);
  if (ok) call->Write(buf, reinterpret_cast<void*>(2));
  ok = ok && next(2);
  if (ok) call->WritesDone(reinterpret_cast<void*>(3));
  ok = ok && next(3);
  grpc::ByteBuffer reply;
  if (ok) call->Read(&reply, reinterpret_cast<void*>(4));
  bool got_reply = ok && next(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  next(5);
  cq.Shutdown();
  void* tag;
  bool tag_ok;
  while (cq.Next(&tag, &tag_ok)) {
  }
  if (!status.ok()) return status;
  if (!got_reply) return grpc::Status(grpc::StatusCode::INTERNAL, "no reflection reply");
  std::vector<grpc::Slice> slices;
  (void)reply.Dump(&slices);
  std::string reply_bytes;
  for (const grpc::Slice& s : slices) reply_bytes.append(s.begin(), s.end());
  std::unique_ptr<pb::Message> resp(factory.GetPrototype(resp_type)->New());
  if (!resp->ParseFromString(reply_bytes)) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "bad reflection reply");
  }
  const pb::Message& list = resp->GetReflection()->GetMessage(
      *resp, resp_type->FindFieldByName("list_services_response"));
  const pb::FieldDescriptor* service_field = list.GetDescriptor()->FindFieldByName("service");
  for (int i = 0; i < list.GetReflection()->FieldSize(list, service_field); ++i) {
    const pb::Message& svc = list.GetReflection()->GetRepeatedMessage(list, service_field, i);
    services->push_back(
        svc.GetReflection()->GetString(svc, svc.GetDescriptor()->FindFieldByName("name")));
  }
  return grpc::Status::OK;
}

class ServingTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = Tokenizer::Load(kTestRoot + "/models/brown-moe/tokenizer.model", 1, 2);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(tok).value().release();
    auto cfg = LoadModelConfig(kTestRoot + "/models/brown-moe/config.json");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    config_ = new ModelConfig(*cfg);
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete config_;
    tokenizer_ = nullptr;
    config_ = nullptr;
  }

  void SetUp() override { StartServer(DefaultOptions()); }

  static ServingFrontEnd::Options DefaultOptions() {
    ServingFrontEnd::Options o;
    o.listen = "127.0.0.1:0";
    o.model_name = kTestModel;
    return o;
  }

  static ClusterStatusInfo TestCluster() {
    ClusterStatusInfo c;
    c.ep = 2;
    c.pp = 1;
    for (int r = 0; r < 2; ++r) {
      RankStatus row;
      row.world_rank = r;
      row.stage = 0;
      row.ep_rank = r;
      row.layer_begin = 0;
      row.layer_end = 4;
      row.experts = {{r, r + 2}, {r + 4}, {}, {r}};
      row.weight_bytes = 1000 + r;
      row.kv_bytes = 2000 + r;
      row.steps = 30 + r;
      row.compute_seconds = 1.25 + r;
      row.wait_seconds = 0.5 + r;
      row.dispatch_bytes_sent = {r == 0 ? 0u : 700u, r == 1 ? 0u : 800u};
      c.ranks.push_back(row);
    }
    c.expert_token_counts = {{1, 2, 3, 4, 5, 6, 7, 8}, {0, 0, 0, 0, 0, 0, 0, 9}};
    return c;
  }

  // (Re)starts the front end; `ready` calls SetReady(true).
  void StartServer(ServingFrontEnd::Options options, bool ready = true,
                   std::shared_ptr<grpc::ChannelCredentials> creds = nullptr,
                   const std::string& target_host = "127.0.0.1") {
    front_.reset();
    front_ = std::make_unique<ServingFrontEnd>(&fake_, tokenizer_, *config_, &TestCluster,
                                               ServingTopology{.ep = 2, .pp = 1, .world_size = 2},
                                               options);
    absl::Status s = front_->Start();
    ASSERT_TRUE(s.ok()) << s;
    if (ready) front_->SetReady(true);
    if (creds == nullptr) creds = grpc::InsecureChannelCredentials();
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(target_host + ":" + std::to_string(front_->bound_port()),
                                         creds, args);
    stub_ = v1::Switchyard::NewStub(channel_);
    kserve_ = inference::GRPCInferenceService::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  void TearDown() override { front_.reset(); }

  // Reads a whole Generate stream.
  grpc::Status ReadStream(const v1::GenerateRequest& req, std::vector<v1::GenerateResponse>* out,
                          grpc::ClientContext* ctx = nullptr) {
    grpc::ClientContext local;
    if (ctx == nullptr) ctx = &local;
    auto reader = stub_->Generate(ctx, req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) out->push_back(msg);
    return reader->Finish();
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = health_->Check(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.status();
  }

  static v1::GenerateRequest TextRequest(const std::string& text, int max_tokens = 8) {
    v1::GenerateRequest r;
    r.set_text(text);
    r.set_max_tokens(max_tokens);
    return r;
  }

  static inline Tokenizer* tokenizer_ = nullptr;
  static inline ModelConfig* config_ = nullptr;

  FakeGenerationQueue fake_;  // outlives front_
  std::unique_ptr<ServingFrontEnd> front_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Switchyard::Stub> stub_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> kserve_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace switchyard
