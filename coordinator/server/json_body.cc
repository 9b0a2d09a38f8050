#include "coordinator/server/json_body.h"

#include "absl/strings/str_cat.h"

namespace switchyard {

std::string JsonTypeName(const nlohmann::json& v) {
  using nlohmann::json;
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::array:
      return "a list";
    case json::value_t::object:
      return "an object";
    default:
      return "a value";
  }
}

absl::Status JsonWrongType(const std::string& field, const std::string& want,
                           const nlohmann::json& got) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": must be ", want, ", got ", JsonTypeName(got)));
}

absl::StatusOr<nlohmann::json> ParseJsonObject(const std::string& body) {
  using nlohmann::json;
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again for the parser's own words (where and why), without letting it escape.
    std::string why = "not valid JSON";
    try {
      const json again = json::parse(body);
      (void)again;
    } catch (const json::parse_error& e) {
      why = absl::StrCat("not valid JSON: ", e.what());
    }
    return absl::InvalidArgumentError(absl::StrCat("body: ", why));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("body: must be a JSON object, got ", JsonTypeName(j)));
  }
  return j;
}

}  // namespace switchyard
