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
  if (absl::Status s = ctx_->CheckText(request->text().size()); !s.ok()) {
    return FailedGenerateStream(s);
  }
  return StartGenerateStream(ctx_->queue(), ctx_->pool(),
                             ctx_->Builder(ParamsFromProto(*request)));
}

grpc::ServerUnaryReactor* SwitchyardService::Complete(grpc::CallbackServerContext* call,
                                                      const v1::GenerateRequest* request,
                                                      v1::CompleteResponse* response) {
  if (absl::Status s = ctx_->AdmitGeneration(*call); !s.ok()) return Done(call, s);
  if (absl::Status s = ctx_->CheckText(request->text().size()); !s.ok()) return Done(call, s);
  return StartUnaryGeneration(
      ctx_->queue(), ctx_->pool(), ctx_->Builder(ParamsFromProto(*request)),
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
  // No text longer than the longest prompt is tokenized (work and memory stay bounded), and
  // never on this gRPC thread.
  if (absl::Status s = ctx_->CheckText(request->text().size()); !s.ok()) return Done(call, s);
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  const Tokenizer* tokenizer = ctx_->tokenizer();
  // `request` and `response` stay valid until Finish.
  const bool posted = ctx_->pool()->Post([reactor, tokenizer, request, response] {
    const bool add_bos = request->has_add_bos() ? request->add_bos() : true;
    std::vector<int32_t> ids = tokenizer->Encode(request->text(), add_bos);
    response->mutable_token_ids()->Add(ids.begin(), ids.end());
    reactor->Finish(grpc::Status::OK);
  });
  if (!posted) reactor->Finish(PoolBusyStatus(*ctx_->pool()));
  return reactor;
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
