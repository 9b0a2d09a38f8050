#include "coordinator/server/kserve_service.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/server/generation_reactors.h"
#include "coordinator/server/grpc_status.h"
#include "coordinator/server/kserve_request.h"

#ifndef SWITCHYARD_VERSION
#define SWITCHYARD_VERSION "unknown"
#endif

namespace switchyard {
namespace {

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* call, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

bool IsServedModel(const std::string& name, const std::string& version, const std::string& served) {
  return name == served && (version.empty() || version == kKServeModelVersion);
}

absl::Status UnknownModel(const std::string& name, const std::string& version,
                          const std::string& served) {
  return absl::NotFoundError(absl::StrCat("name: unknown model \"", name, "\" version \"", version,
                                          "\"; this server serves \"", served, "\" version ",
                                          kKServeModelVersion));
}

void AddTensor(
    const char* name,
    google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* out) {
  auto* t = out->Add();
  t->set_name(name);
  t->set_datatype("BYTES");
  t->add_shape(1);
}

}  // namespace

grpc::ServerUnaryReactor* KServeService::ServerLive(grpc::CallbackServerContext* call,
                                                    const inference::ServerLiveRequest* request,
                                                    inference::ServerLiveResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  response->set_live(true);
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ServerReady(grpc::CallbackServerContext* call,
                                                     const inference::ServerReadyRequest* request,
                                                     inference::ServerReadyResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  response->set_ready(ctx_->serving());
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelReady(grpc::CallbackServerContext* call,
                                                    const inference::ModelReadyRequest* request,
                                                    inference::ModelReadyResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  if (!IsServedModel(request->name(), request->version(), ctx_->model_name())) {
    return Done(call, UnknownModel(request->name(), request->version(), ctx_->model_name()));
  }
  response->set_ready(ctx_->serving());
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(
    grpc::CallbackServerContext* call, const inference::ServerMetadataRequest* request,
    inference::ServerMetadataResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  response->set_name("switchyard");
  response->set_version(SWITCHYARD_VERSION);
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(
    grpc::CallbackServerContext* call, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  if (!IsServedModel(request->name(), request->version(), ctx_->model_name())) {
    return Done(call, UnknownModel(request->name(), request->version(), ctx_->model_name()));
  }
  response->set_name(ctx_->model_name());
  response->add_versions(std::string(kKServeModelVersion));
  response->set_platform("switchyard");
  AddTensor(kKServeInput, response->mutable_inputs());
  AddTensor(kKServeOutput, response->mutable_outputs());
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelInfer(grpc::CallbackServerContext* call,
                                                    const inference::ModelInferRequest* request,
                                                    inference::ModelInferResponse* response) {
  if (absl::Status s = ctx_->AdmitGeneration(*call); !s.ok()) return Done(call, s);
  absl::StatusOr<GenerationParams> params = ParseModelInferRequest(*request, ctx_->model_name());
  if (!params.ok()) return Done(call, params.status());
  if (params->text.has_value()) {
    absl::Status s = ctx_->CheckText(params->text->size(), kKServeInput);
    if (!s.ok()) return Done(call, s);
  }
  // `request` and `response` stay valid until the call is finished, after `fill` ran.
  return StartUnaryGeneration(
      ctx_->queue(), ctx_->pool(), ctx_->Builder(*std::move(params)),
      [request, response, model = ctx_->model_name()](const GenerationResult& result) {
        FillModelInferResponse(*request, model, result, response);
      });
}

grpc::ServerUnaryReactor* KServeService::RepositoryModelLoad(
    grpc::CallbackServerContext* call, const inference::RepositoryModelLoadRequest* request,
    inference::RepositoryModelLoadResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  return Done(call, absl::UnimplementedError(
                        "RepositoryModelLoad: the model is loaded when the job starts"));
}

grpc::ServerUnaryReactor* KServeService::RepositoryModelUnload(
    grpc::CallbackServerContext* call, const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  return Done(call, absl::UnimplementedError(
                        "RepositoryModelUnload: the model stays loaded until the job ends"));
}

}  // namespace switchyard
