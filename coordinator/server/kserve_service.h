// inference.GRPCInferenceService (KServe v2 / Open Inference Protocol) on the gRPC callback
// API, serving the one model as a text-generation model (see kserve_request.h for the
// tensor mapping). Thread-safe; every method first checks the bearer token. RPCs not
// overridden here answer UNIMPLEMENTED (the generated base class does).
#pragma once

#include "coordinator/server/serving_context.h"
#include "kserve/grpc_predict_v2.grpc.pb.h"

namespace switchyard {

class KServeService final : public inference::GRPCInferenceService::CallbackService {
 public:
  // `context` is borrowed and must outlive the service.
  explicit KServeService(const ServingContext* context) : ctx_(context) {}

  // true whenever the server answers.
  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* call,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  // The health status: ready and not draining.
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* call,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  // Ready when the name is the served model's (version "" or "1") and the server is ready.
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* call,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* call,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  // NOT_FOUND for another model name.
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* call,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* call,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  // UNIMPLEMENTED (after the token check): the model is loaded when the job starts.
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* call, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* call, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;

 private:
  const ServingContext* const ctx_;
};

}  // namespace switchyard
