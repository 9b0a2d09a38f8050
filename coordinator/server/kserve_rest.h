// KServe v2 REST (the Open Inference Protocol over HTTP/JSON) and Triton's generate
// extension, for the routes of coordinator/server/http_front_end.cc. The JSON is read into
// the same inference::ModelInferRequest the gRPC ModelInfer takes, so both protocols validate
// a request alike (ParseModelInferRequest).
//
//   POST /v2/models/{name}/infer
//     {"id": "a", "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
//      "data": ["The jury said"]}], "parameters": {"max_tokens": 16}}
//   -> {"model_name", "model_version", "id", "parameters": {"finish_reason", ...},
//       "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [...]}]}
//   POST /v2/models/{name}/generate[_stream]
//     {"text_input": "The jury said", "max_tokens": 16, "parameters": {"temperature": 0}}
//   -> {"model_name", "model_version", "text_output", "finish_reason", "prompt_tokens",
//       "completion_tokens"} (generate_stream: one such object per server-sent event, with the
//       text delta; the last one carries the counts)
//
// Errors: kInvalidArgument naming the field ("inputs[0].data", "parameters.max_tokens").
// Pure functions; thread-safe.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/server/generation_result.h"
#include "kserve/grpc_predict_v2.pb.h"

namespace switchyard {

// The request of POST /v2/models/{model}[/versions/{version}]/infer.
absl::StatusOr<inference::ModelInferRequest> InferRequestFromJson(const std::string& body,
                                                                  const std::string& model,
                                                                  const std::string& version);
nlohmann::json InferResponseToJson(const inference::ModelInferResponse& response);

// The request of POST /v2/models/{model}/generate: text_input and the sampling parameters
// (max_tokens, temperature, top_k, top_p, seed, stop), top-level or under "parameters";
// "stream" is accepted and ignored (the route decides). Unknown keys are refused, as unknown
// inputs are.
absl::StatusOr<inference::ModelInferRequest> GenerateRequestFromJson(const std::string& body,
                                                                     const std::string& model,
                                                                     const std::string& version);
// One response object of the generate extension: `text` and, when `final`, the finish
// reason and counts of `result`.
nlohmann::json GenerateResponseJson(const std::string& model, const std::string& text,
                                    const GenerationResult* final_result);

}  // namespace switchyard
