#include "coordinator/server/kserve_rest.h"

#include <cstdint>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/finish_reason.h"
#include "coordinator/server/json_body.h"
#include "coordinator/server/kserve_request.h"

namespace switchyard {
namespace {

using nlohmann::json;

absl::Status Invalid(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

// A JSON parameter value as the protocol's InferParameter: booleans, integers (int64, or
// uint64 beyond it), other numbers (double) and strings.
absl::Status SetParameter(const std::string& field, const json& v, inference::InferParameter* p) {
  if (v.is_boolean()) {
    p->set_bool_param(v.get<bool>());
  } else if (v.is_number_unsigned() &&
             v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    p->set_uint64_param(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    p->set_int64_param(v.get<int64_t>());
  } else if (v.is_number()) {
    p->set_double_param(v.get<double>());
  } else if (v.is_string()) {
    p->set_string_param(v.get<std::string>());
  } else {
    return JsonWrongType(field, "a boolean, a number or a string", v);
  }
  return absl::OkStatus();
}

absl::Status SetParameters(const json& params, inference::ModelInferRequest* out) {
  if (params.is_null()) return absl::OkStatus();
  if (!params.is_object()) return JsonWrongType("parameters", "an object", params);
  for (const auto& [name, value] : params.items()) {
    RETURN_IF_ERROR(
        SetParameter(absl::StrCat("parameters.", name), value, &(*out->mutable_parameters())[name]));
  }
  return absl::OkStatus();
}

// The elements of a tensor's "data": a flat list or nested lists (row-major), flattened
// (the body's depth is bounded by ParseJsonObject).
void Flatten(const json& data, std::vector<const json*>* out) {
  if (!data.is_array()) {
    out->push_back(&data);
    return;
  }
  for (const json& element : data) Flatten(element, out);
}

absl::Status ReadInput(size_t i, const json& in, inference::ModelInferRequest* out) {
  const std::string at = absl::StrCat("inputs[", i, "]");
  if (!in.is_object()) return JsonWrongType(at, "an object", in);
  auto* t = out->add_inputs();
  const json& name = JsonField(in, "name");
  if (!name.is_string()) return JsonWrongType(at + ".name", "a string", name);
  t->set_name(name.get<std::string>());
  const json& datatype = JsonField(in, "datatype");
  if (!datatype.is_string()) return JsonWrongType(at + ".datatype", "a string", datatype);
  t->set_datatype(datatype.get<std::string>());
  const json& shape = JsonField(in, "shape");
  if (!shape.is_array()) return JsonWrongType(at + ".shape", "a list of integers", shape);
  for (size_t k = 0; k < shape.size(); ++k) {
    if (!shape[k].is_number_integer()) {
      return JsonWrongType(absl::StrCat(at, ".shape[", k, "]"), "an integer", shape[k]);
    }
    t->add_shape(shape[k].get<int64_t>());
  }
  const json& data = JsonField(in, "data");
  if (data.is_null()) return Invalid(at + ".data", "is required");
  std::vector<const json*> elements;
  Flatten(data, &elements);
  for (size_t k = 0; k < elements.size(); ++k) {
    const json& e = *elements[k];
    if (t->datatype() == "BYTES") {
      if (!e.is_string()) {
        return JsonWrongType(absl::StrCat(at, ".data[", k, "]"), "a string (BYTES)", e);
      }
      t->mutable_contents()->add_bytes_contents(e.get<std::string>());
    } else if (e.is_number_integer()) {  // refused later by datatype; kept for the message
      t->mutable_contents()->add_int64_contents(e.get<int64_t>());
    } else if (e.is_number()) {
      t->mutable_contents()->add_fp64_contents(e.get<double>());
    } else {
      return JsonWrongType(absl::StrCat(at, ".data[", k, "]"), "a number", e);
    }
  }
  if (const json& p = JsonField(in, "parameters"); !p.is_null()) {
    if (!p.is_object()) return JsonWrongType(at + ".parameters", "an object", p);
    for (const auto& [name, value] : p.items()) {
      RETURN_IF_ERROR(SetParameter(absl::StrCat(at, ".parameters.", name), value,
                                   &(*t->mutable_parameters())[name]));
    }
  }
  return absl::OkStatus();
}

json ParameterToJson(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return p.bool_param();
    case inference::InferParameter::kInt64Param:
      return p.int64_param();
    case inference::InferParameter::kUint64Param:
      return p.uint64_param();
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kStringParam:
      return p.string_param();
    default:
      return nullptr;
  }
}

}  // namespace

absl::StatusOr<inference::ModelInferRequest> InferRequestFromJson(const std::string& body,
                                                                  const std::string& model,
                                                                  const std::string& version) {
  ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  inference::ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version(version);
  static const std::set<std::string> kKeys = {"id", "inputs", "outputs", "parameters"};
  for (const auto& [key, value] : j.items()) {
    if (kKeys.count(key) == 0) {
      return Invalid(key, "unknown field of an inference request (id, inputs, outputs, "
                          "parameters)");
    }
  }
  if (const json& id = JsonField(j, "id"); !id.is_null()) {
    if (!id.is_string()) return JsonWrongType("id", "a string", id);
    req.set_id(id.get<std::string>());
  }
  const json& inputs = JsonField(j, "inputs");
  if (!inputs.is_array()) return JsonWrongType("inputs", "a list of tensors", inputs);
  for (size_t i = 0; i < inputs.size(); ++i) RETURN_IF_ERROR(ReadInput(i, inputs[i], &req));
  if (const json& outputs = JsonField(j, "outputs"); !outputs.is_null()) {
    if (!outputs.is_array()) return JsonWrongType("outputs", "a list", outputs);
    for (size_t i = 0; i < outputs.size(); ++i) {
      const json& name = JsonField(outputs[i], "name");  // null for a non-object
      if (!name.is_string()) {
        return JsonWrongType(absl::StrCat("outputs[", i, "].name"), "a string", name);
      }
      req.add_outputs()->set_name(name.get<std::string>());
    }
  }
  RETURN_IF_ERROR(SetParameters(JsonField(j, "parameters"), &req));
  return req;
}

json InferResponseToJson(const inference::ModelInferResponse& response) {
  json params = json::object();
  for (const auto& [name, value] : response.parameters()) params[name] = ParameterToJson(value);
  json outputs = json::array();
  for (const auto& out : response.outputs()) {
    json data = json::array();
    for (const std::string& b : out.contents().bytes_contents()) data.push_back(b);
    outputs.push_back({{"name", out.name()},
                       {"datatype", out.datatype()},
                       {"shape", json(std::vector<int64_t>(out.shape().begin(), out.shape().end()))},
                       {"data", std::move(data)}});
  }
  json j = {{"model_name", response.model_name()},
            {"model_version", response.model_version()},
            {"parameters", std::move(params)},
            {"outputs", std::move(outputs)}};
  if (!response.id().empty()) j["id"] = response.id();
  return j;
}

absl::StatusOr<inference::ModelInferRequest> GenerateRequestFromJson(const std::string& body,
                                                                     const std::string& model,
                                                                     const std::string& version) {
  ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  inference::ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version(version);
  static const std::set<std::string> kSampling = {"max_tokens", "temperature", "top_k",
                                                  "top_p",      "seed",        "stop"};
  auto* params = req.mutable_parameters();
  bool has_text = false;
  for (const auto& [key, value] : j.items()) {
    if (key == kKServeInput) {
      if (!value.is_string()) return JsonWrongType(key, "a string", value);
      auto* t = req.add_inputs();
      t->set_name(kKServeInput);
      t->set_datatype("BYTES");
      t->add_shape(1);
      t->mutable_contents()->add_bytes_contents(value.get<std::string>());
      has_text = true;
    } else if (key == "parameters") {
      RETURN_IF_ERROR(SetParameters(value, &req));
    } else if (key == "stream") {
      if (!value.is_boolean()) return JsonWrongType(key, "a boolean", value);
    } else if (kSampling.count(key) > 0) {
      RETURN_IF_ERROR(SetParameter(key, value, &(*params)[key]));
    } else {
      return Invalid(key, absl::StrCat("unknown input; the model takes ", kKServeInput,
                                       " and the parameters max_tokens, temperature, top_k, "
                                       "top_p, seed, stop"));
    }
  }
  if (!has_text) return Invalid(kKServeInput, "is required");
  // A parameter given both at the top level and under "parameters" is ambiguous.
  if (const json& p = JsonField(j, "parameters"); p.is_object()) {
    for (const auto& [key, value] : p.items()) {
      if (j.contains(key)) {
        return Invalid(key, "given both at the top level and under \"parameters\"; give it once");
      }
    }
  }
  return req;
}

json GenerateResponseJson(const std::string& model, const std::string& text,
                          const GenerationResult* final_result) {
  json j = {{"model_name", model}, {"model_version", kKServeModelVersion}, {"text_output", text}};
  if (final_result != nullptr) {
    j["finish_reason"] = FinishReasonName(final_result->finish_reason);
    j["prompt_tokens"] = final_result->prompt_tokens;
    j["completion_tokens"] = final_result->completion_tokens;
  }
  return j;
}

}  // namespace switchyard
