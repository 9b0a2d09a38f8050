// Fuzzes the validation of generation requests as the gRPC services run it on a message
// decoded from the wire:
//   switchyard.v1 Generate/Complete (switchyard_service.cc): CheckText (CheckPromptBytes) ->
//     ParamsFromProto -> BuildGenerateRequest; Detokenize: ValidateTokenIds.
//   KServe v2 ModelInfer (kserve_service.cc): ParseModelInferRequest (DecodeRawBytesElement for
//     raw_input_contents) -> CheckText -> BuildGenerateRequest; FillModelInferResponse.
// Input: byte 0 selects; bit 0: 0 = switchyard.v1.GenerateRequest, 1 =
// inference.ModelInferRequest; bit 1: the default limits or tight ones (short prompts, one stop
// string); bit 2: brown-moe's tokenizer (text prompts tokenized, as the demo model serves) or
// none (token ids only, as a model without tokenizer.model serves). Bytes 1.. are the
// serialized message (as gRPC would receive it; a message protobuf refuses, e.g. invalid UTF-8
// in a string field, never reaches the service).
//
// A refusal (a status) is not a finding; it must be kInvalidArgument. An accepted request is
// checked against what BuildGenerateRequest promises the scheduler.
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"

#include "coordinator/server/kserve_request.h"
#include "coordinator/server/proto_convert.h"
#include "coordinator/server/request_validation.h"
#include "fuzz/fuzz_common.h"
#include "google/protobuf/stubs/logging.h"
#include "kserve/grpc_predict_v2.pb.h"
#include "switchyard/v1/switchyard.pb.h"

namespace sy = switchyard;

namespace {

constexpr char kModel[] = "brown-moe";

const sy::ModelConfig& Config() {
  static const sy::ModelConfig cfg = sy::fuzz::LoadCheckedInConfig("brown-moe");
  return cfg;
}

const sy::Tokenizer* BrownMoeTokenizer() {
  static const sy::Tokenizer* tokenizer = [] {
    auto t = sy::Tokenizer::Load(std::string(SWITCHYARD_SOURCE_ROOT) +
                                     "/models/brown-moe/tokenizer.model",
                                 Config().bos_token_id, Config().eos_token_id);
    SY_FUZZ_CHECK(t.ok(), t.status().ToString());
    return std::move(t).value().release();
  }();
  return tokenizer;
}

// As ServingContext builds it (serving_context.cc), with or without the tokenizer, and a
// variant of each with tight limits.
const sy::ValidationContext& Context(bool tight, bool with_tokenizer) {
  auto make = [](bool tight, bool with_tokenizer) {
    sy::ValidationContext c;
    c.tokenizer = with_tokenizer ? BrownMoeTokenizer() : nullptr;
    c.config = &Config();
    c.model_name = kModel;
    if (tight) {
      c.limits.default_max_tokens = 2000;  // over the context: refused unless max_tokens is set
      c.limits.max_stop_strings = 1;
      c.limits.max_stop_bytes = 4;
      c.limits.max_prompt_bytes = 16;
    }
    return c;
  };
  static const sy::ValidationContext contexts[2][2] = {{make(false, false), make(false, true)},
                                                       {make(true, false), make(true, true)}};
  return contexts[tight][with_tokenizer];
}

// ServingContext::CheckText: OK without a tokenizer, else CheckPromptBytes. Both are run: the
// server's own check, and CheckPromptBytes for the code it guards.
void CheckText(size_t bytes, const sy::ValidationContext& ctx, const std::string& field) {
  absl::Status s = sy::CheckPromptBytes(bytes, ctx, field);
  if (!s.ok()) sy::fuzz::CheckInvalidArgument(s, "CheckPromptBytes");
  SY_FUZZ_CHECK(s.ok() == (static_cast<int64_t>(bytes) <= sy::MaxPromptBytes(ctx)), s.ToString());
}

// BuildGenerateRequest, and on success what it promises the scheduler. Returns its status.
absl::Status Build(const sy::GenerationParams& params, const sy::ValidationContext& ctx) {
  auto req = sy::BuildGenerateRequest(params, ctx);
  sy::fuzz::Verbose("BuildGenerateRequest", req.status());
  if (!req.ok()) {
    sy::fuzz::CheckInvalidArgument(req.status(), "BuildGenerateRequest");
    return req.status();
  }
  const sy::ModelConfig& cfg = *ctx.config;
  SY_FUZZ_CHECK(!req->prompt_ids.empty(), "empty prompt accepted");
  for (int32_t id : req->prompt_ids) SY_FUZZ_CHECK(id >= 0 && id < cfg.vocab_size, "token id");
  SY_FUZZ_CHECK(req->max_tokens >= 1, "max_tokens");
  SY_FUZZ_CHECK(static_cast<int64_t>(req->prompt_ids.size()) + req->max_tokens <=
                    cfg.max_position_embeddings,
                "prompt + max_tokens exceed the context");
  SY_FUZZ_CHECK(std::isfinite(req->sampling.temperature) && req->sampling.temperature >= 0,
                "temperature");
  SY_FUZZ_CHECK(req->sampling.top_k >= 0 && req->sampling.top_k < cfg.vocab_size, "top_k");
  SY_FUZZ_CHECK(std::isfinite(req->sampling.top_p) && req->sampling.top_p > 0 &&
                    req->sampling.top_p <= 1,
                "top_p");
  SY_FUZZ_CHECK(static_cast<int>(req->stop.size()) <= ctx.limits.max_stop_strings, "stop");
  SY_FUZZ_CHECK(req->stop_at_eos == !params.ignore_eos, "ignore_eos");
  return absl::OkStatus();
}

void SwitchyardRequest(const uint8_t* data, size_t size, const sy::ValidationContext& ctx) {
  switchyard::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) {
    sy::fuzz::Verbose("switchyard.v1.GenerateRequest", absl::DataLossError("not a valid message"));
    return;
  }
  // Generate / Complete.
  CheckText(request.text().size(), ctx, "text");
  const sy::GenerationParams params = sy::ParamsFromProto(request);
  (void)Build(params, ctx);  // its checks are the point here; the status is logged
  // Detokenize validates its ids the same way (against the tokenizer's vocabulary).
  std::vector<int32_t> ids(request.token_ids().begin(), request.token_ids().end());
  absl::Status s = sy::ValidateTokenIds(ids, ctx.config->vocab_size, "token_ids");
  if (!s.ok()) sy::fuzz::CheckInvalidArgument(s, "ValidateTokenIds");
}

void KServeRequest(const uint8_t* data, size_t size, const sy::ValidationContext& ctx) {
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) {
    sy::fuzz::Verbose("inference.ModelInferRequest", absl::DataLossError("not a valid message"));
    return;
  }
  for (const std::string& raw : request.raw_input_contents()) {
    auto decoded = sy::DecodeRawBytesElement(raw, "raw_input_contents[0]");
    if (!decoded.ok()) sy::fuzz::CheckInvalidArgument(decoded.status(), "DecodeRawBytesElement");
  }
  auto params = sy::ParseModelInferRequest(request, kModel);
  sy::fuzz::Verbose("ParseModelInferRequest", params.status());
  if (!params.ok()) {
    sy::fuzz::CheckInvalidArgument(params.status(), "ParseModelInferRequest");
  } else {
    SY_FUZZ_CHECK(params->text.has_value() && !params->text->empty(), "no prompt");
    CheckText(params->text->size(), ctx, sy::kKServeInput);
    // KServe has no field `text`: a refusal of the prompt names text_input.
    const absl::Status s = Build(*params, ctx);
    SY_FUZZ_CHECK(!absl::StartsWith(s.message(), "text:") &&
                      !absl::StartsWith(s.message(), "text,"),
                  s.ToString());
  }
  // The response echoes the request's id.
  sy::GenerationResult result;
  result.text = "x";
  result.token_ids = {5};
  result.prompt_tokens = 1;
  result.completion_tokens = 1;
  inference::ModelInferResponse response;
  sy::FillModelInferResponse(request, kModel, result, &response);
  SY_FUZZ_CHECK(response.id() == request.id(), "id not echoed");
  (void)response.SerializeAsString();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field makes protobuf log an error per message; the parse result
  // is what matters.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int,
                                     const std::string&) {});
  for (bool tight : {false, true}) {
    for (bool with_tokenizer : {false, true}) Context(tight, with_tokenizer);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t select = data[0];
  const sy::ValidationContext& ctx = Context((select & 2) != 0, (select & 4) != 0);
  if ((select & 1) == 0) {
    SwitchyardRequest(data + 1, size - 1, ctx);
  } else {
    KServeRequest(data + 1, size - 1, ctx);
  }
  return 0;
}
