// switchyard.v1.Switchyard on the gRPC callback API. Thread-safe; every method first checks
// the bearer token (ServingContext::Authorize), and Generate/Complete refuse new work while
// the server is draining or not ready (UNAVAILABLE).
#pragma once

#include "coordinator/server/serving_context.h"
#include "switchyard/v1/switchyard.grpc.pb.h"

namespace switchyard {

class SwitchyardService final : public v1::Switchyard::CallbackService {
 public:
  // `context` is borrowed and must outlive the service.
  explicit SwitchyardService(const ServingContext* context) : ctx_(context) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* call, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* call,
                                     const v1::GenerateRequest* request,
                                     v1::CompleteResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* call,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* call,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* call,
                                         const v1::GetModelInfoRequest* request,
                                         v1::GetModelInfoResponse* response) override;
  grpc::ServerUnaryReactor* GetClusterStatus(grpc::CallbackServerContext* call,
                                             const v1::GetClusterStatusRequest* request,
                                             v1::GetClusterStatusResponse* response) override;

 private:
  const ServingContext* const ctx_;
};

}  // namespace switchyard
