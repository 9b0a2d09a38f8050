#include "coordinator/server/switchyard_service.h"

#include <utility>
#include <vector>

#include "coordinator/server/generation_reactors.h"
#include "coordinator/server/grpc_status.h"
#include "coordinator/server/proto_convert.h"

namespace switchyard {
namespace {

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* call, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* SwitchyardService::Generate(
    grpc::CallbackServerContext* call, const v1::GenerateRequest* request) {
  if (absl::Status s = ctx_->AdmitGeneration(*call); !s.ok()) return FailedGenerateStream(s);
  absl::StatusOr<GenerateRequest> req =
      BuildGenerateRequest(ParamsFromProto(*request), ctx_->validation());
  if (!req.ok()) return FailedGenerateStream(req.status());
  return StartGenerateStream(ctx_->queue(), *std::move(req));
}

grpc::ServerUnaryReactor* SwitchyardService::Complete(grpc::CallbackServerContext* call,
                                                      const v1::GenerateRequest* request,
                                                      v1::CompleteResponse* response) {
  if (absl::Status s = ctx_->AdmitGeneration(*call); !s.ok()) return Done(call, s);
  absl::StatusOr<GenerateRequest> req =
      BuildGenerateRequest(ParamsFromProto(*request), ctx_->validation());
  if (!req.ok()) return Done(call, req.status());
  return StartUnaryGeneration(
      ctx_->queue(), *std::move(req),
      [response](const GenerationResult& result) { ResultToProto(result, response); });
}

grpc::ServerUnaryReactor* SwitchyardService::Tokenize(grpc::CallbackServerContext* call,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  if (ctx_->tokenizer() == nullptr) {
    return Done(call, absl::FailedPreconditionError(
                          "Tokenize: the served model has no tokenizer.model (token ids only)"));
  }
  const bool add_bos = request->has_add_bos() ? request->add_bos() : true;
  std::vector<int32_t> ids = ctx_->tokenizer()->Encode(request->text(), add_bos);
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* SwitchyardService::Detokenize(grpc::CallbackServerContext* call,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  if (ctx_->tokenizer() == nullptr) {
    return Done(call, absl::FailedPreconditionError(
                          "Detokenize: the served model has no tokenizer.model (token ids only)"));
  }
  std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  if (absl::Status s = ValidateTokenIds(ids, ctx_->tokenizer()->vocab_size(), "token_ids");
      !s.ok()) {
    return Done(call, s);
  }
  response->set_text(ctx_->tokenizer()->Decode(ids));
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* SwitchyardService::GetModelInfo(grpc::CallbackServerContext* call,
                                                          const v1::GetModelInfoRequest* request,
                                                          v1::GetModelInfoResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  ModelInfoToProto(ctx_->config(), ctx_->model_name(), ctx_->topology(), response);
  return Done(call, absl::OkStatus());
}

grpc::ServerUnaryReactor* SwitchyardService::GetClusterStatus(
    grpc::CallbackServerContext* call, const v1::GetClusterStatusRequest* request,
    v1::GetClusterStatusResponse* response) {
  if (absl::Status s = ctx_->Authorize(*call); !s.ok()) return Done(call, s);
  ClusterStatusToProto(ctx_->cluster_status(), ctx_->queue()->Stats(), ctx_->draining(), response);
  return Done(call, absl::OkStatus());
}

}  // namespace switchyard
