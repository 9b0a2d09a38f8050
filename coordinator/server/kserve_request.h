// The KServe v2 (Open Inference Protocol) mapping of a text-generation model:
//   input   text_input   BYTES [1]  the prompt (UTF-8)
//   output  text_output  BYTES [1]  the generated text
//   request parameters: max_tokens (int64_param), temperature (double_param), top_k
//   (int64_param), top_p (double_param), seed (int64_param >= 0 or uint64_param), stop
//   (string_param, one stop string). Integer parameters also accept uint64_param; the
//   floating ones also accept int64_param/uint64_param. Unknown parameters are refused.
// Pure functions, thread-safe.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "coordinator/server/generation_result.h"
#include "coordinator/server/request_validation.h"
#include "kserve/grpc_predict_v2.pb.h"

namespace switchyard {

inline constexpr char kKServeInput[] = "text_input";
inline constexpr char kKServeOutput[] = "text_output";
inline constexpr char kKServeModelVersion[] = "1";

// Reads the prompt and sampling parameters of `request` for the model `served_model`.
// The result still goes through BuildGenerateRequest (which names the sampling fields).
// Errors (kInvalidArgument naming the field): model_name, model_version, inputs,
// text_input (name, datatype, shape, contents, empty prompt), raw_input_contents, outputs,
// parameters (unknown name) and each parameter of the wrong type (e.g. "max_tokens").
absl::StatusOr<GenerationParams> ParseModelInferRequest(const inference::ModelInferRequest& request,
                                                        const std::string& served_model);

// The response: text_output in contents.bytes_contents (raw_output_contents empty), the
// request id echoed, and parameters finish_reason (string), prompt_tokens and
// completion_tokens (int64).
void FillModelInferResponse(const inference::ModelInferRequest& request,
                            const std::string& served_model, const GenerationResult& result,
                            inference::ModelInferResponse* response);

// Decodes one BYTES tensor element from raw contents: a 4-byte little-endian length, then
// that many bytes, and nothing else (shape [1]). Error names `field`.
absl::StatusOr<std::string> DecodeRawBytesElement(const std::string& raw, const std::string& field);

}  // namespace switchyard
