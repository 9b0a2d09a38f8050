#include "coordinator/server/kserve_request.h"

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/stubs/common.h"
#include "common/status_macros.h"
#include "coordinator/finish_reason.h"
#include "coordinator/server/proto_convert.h"

namespace switchyard {
namespace {

using inference::InferParameter;

absl::Status Invalid(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::StatusOr<int64_t> IntParam(const std::string& name, const InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case InferParameter::kInt64Param:
      return p.int64_param();
    case InferParameter::kUint64Param:
      if (p.uint64_param() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(name, absl::StrCat(p.uint64_param(), " is out of range"));
      }
      return static_cast<int64_t>(p.uint64_param());
    default:
      return Invalid(name, "expected an integer (int64_param)");
  }
}

absl::StatusOr<double> DoubleParam(const std::string& name, const InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case InferParameter::kDoubleParam:
      return p.double_param();
    case InferParameter::kInt64Param:
      return static_cast<double>(p.int64_param());
    case InferParameter::kUint64Param:
      return static_cast<double>(p.uint64_param());
    default:
      return Invalid(name, "expected a number (double_param)");
  }
}

absl::StatusOr<uint64_t> SeedParam(const std::string& name, const InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case InferParameter::kUint64Param:
      return p.uint64_param();
    case InferParameter::kInt64Param:
      if (p.int64_param() < 0)
        return Invalid(name, absl::StrCat("must be >= 0, got ", p.int64_param()));
      return static_cast<uint64_t>(p.int64_param());
    default:
      return Invalid(name, "expected an integer (int64_param or uint64_param)");
  }
}

absl::Status ReadParameters(const inference::ModelInferRequest& request, GenerationParams* out) {
  for (const auto& [name, value] : request.parameters()) {
    if (name == "max_tokens") {
      ASSIGN_OR_RETURN(out->max_tokens, IntParam(name, value));
    } else if (name == "top_k") {
      ASSIGN_OR_RETURN(out->top_k, IntParam(name, value));
    } else if (name == "temperature") {
      ASSIGN_OR_RETURN(out->temperature, DoubleParam(name, value));
    } else if (name == "top_p") {
      ASSIGN_OR_RETURN(out->top_p, DoubleParam(name, value));
    } else if (name == "seed") {
      ASSIGN_OR_RETURN(out->seed, SeedParam(name, value));
    } else if (name == "stop") {
      if (value.parameter_choice_case() != InferParameter::kStringParam) {
        return Invalid(name, "expected a string (string_param)");
      }
      out->stop.push_back(value.string_param());
    } else {
      return Invalid("parameters", absl::StrCat("unknown parameter \"", name,
                                                "\"; supported: max_tokens, temperature, "
                                                "top_k, top_p, seed, stop"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadPrompt(const inference::ModelInferRequest& request) {
  if (request.inputs_size() != 1) {
    return Invalid("inputs", absl::StrCat("expected one input tensor, ", kKServeInput, "; got ",
                                          request.inputs_size()));
  }
  const auto& input = request.inputs(0);
  if (input.name() != kKServeInput) {
    return Invalid("inputs[0].name", absl::StrCat("unknown input \"", input.name(),
                                                  "\"; the model's input is ", kKServeInput));
  }
  if (input.datatype() != "BYTES") {
    return Invalid(kKServeInput,
                   absl::StrCat("datatype must be BYTES, got \"", input.datatype(), "\""));
  }
  bool one_element = input.shape_size() > 0;
  for (int64_t d : input.shape()) one_element = one_element && d == 1;
  if (!one_element) {
    return Invalid(kKServeInput, absl::StrCat("shape must be [1] (one string), got [",
                                              absl::StrJoin(input.shape(), ","), "]"));
  }
  const int typed = input.contents().bytes_contents_size();
  std::string prompt;
  if (request.raw_input_contents_size() > 0) {
    if (typed > 0) {
      return Invalid(kKServeInput, "both contents and raw_input_contents are set; use one");
    }
    if (request.raw_input_contents_size() != 1) {
      return Invalid("raw_input_contents", absl::StrCat("expected one entry per input (1), got ",
                                                        request.raw_input_contents_size()));
    }
    ASSIGN_OR_RETURN(prompt,
                     DecodeRawBytesElement(request.raw_input_contents(0), "raw_input_contents[0]"));
  } else {
    if (typed != 1) {
      return Invalid(kKServeInput, absl::StrCat("expected 1 element in contents.bytes_contents, "
                                                "got ",
                                                typed));
    }
    prompt = input.contents().bytes_contents(0);
  }
  if (prompt.empty()) return Invalid(kKServeInput, "the prompt is empty");
  // The same check protobuf makes of switchyard.v1's string fields, so both APIs refuse the
  // same bytes (a BYTES tensor may carry any bytes; a prompt must be text).
  const int valid = google::protobuf::internal::UTF8SpnStructurallyValid(prompt);
  if (static_cast<size_t>(valid) < prompt.size()) {
    return Invalid(kKServeInput,
                   absl::StrCat("the prompt is not valid UTF-8 (at byte ", valid, " of ",
                                prompt.size(), "); send text as UTF-8"));
  }
  return prompt;
}

}  // namespace

absl::StatusOr<std::string> DecodeRawBytesElement(const std::string& raw,
                                                  const std::string& field) {
  if (raw.size() < 4) {
    return Invalid(field, "a BYTES element needs a 4-byte little-endian length prefix");
  }
  const auto* b = reinterpret_cast<const unsigned char*>(raw.data());
  const uint64_t length = static_cast<uint64_t>(b[0]) | static_cast<uint64_t>(b[1]) << 8 |
                          static_cast<uint64_t>(b[2]) << 16 | static_cast<uint64_t>(b[3]) << 24;
  if (length != raw.size() - 4) {
    return Invalid(field, absl::StrCat("length prefix says ", length, " bytes but ", raw.size() - 4,
                                       " follow (shape [1] holds one string)"));
  }
  return raw.substr(4);
}

absl::StatusOr<GenerationParams> ParseModelInferRequest(const inference::ModelInferRequest& request,
                                                        const std::string& served_model) {
  if (!request.model_name().empty() && request.model_name() != served_model) {
    return Invalid("model_name", absl::StrCat("unknown model \"", request.model_name(),
                                              "\"; this server serves \"", served_model, "\""));
  }
  if (!request.model_version().empty() && request.model_version() != kKServeModelVersion) {
    return Invalid("model_version",
                   absl::StrCat("unknown version \"", request.model_version(),
                                "\"; the model has version ", kKServeModelVersion));
  }
  for (int i = 0; i < request.outputs_size(); ++i) {
    if (request.outputs(i).name() != kKServeOutput) {
      return Invalid(absl::StrCat("outputs[", i, "].name"),
                     absl::StrCat("unknown output \"", request.outputs(i).name(),
                                  "\"; the model's output is ", kKServeOutput));
    }
  }
  GenerationParams params;
  params.text_field = kKServeInput;
  ASSIGN_OR_RETURN(params.text, ReadPrompt(request));
  RETURN_IF_ERROR(ReadParameters(request, &params));
  return params;
}

void FillModelInferResponse(const inference::ModelInferRequest& request,
                            const std::string& served_model, const GenerationResult& result,
                            inference::ModelInferResponse* response) {
  response->set_model_name(served_model);
  response->set_model_version(kKServeModelVersion);
  response->set_id(request.id());
  auto* params = response->mutable_parameters();
  (*params)["finish_reason"].set_string_param(FinishReasonName(result.finish_reason));
  (*params)["prompt_tokens"].set_int64_param(result.prompt_tokens);
  (*params)["completion_tokens"].set_int64_param(result.completion_tokens);
  auto* output = response->add_outputs();
  output->set_name(kKServeOutput);
  output->set_datatype("BYTES");
  output->add_shape(1);
  output->mutable_contents()->add_bytes_contents(result.text);
}

}  // namespace switchyard
