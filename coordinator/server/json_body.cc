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

const nlohmann::json& JsonField(const nlohmann::json& object, const char* key) {
  static const nlohmann::json* const kNull = new nlohmann::json(nullptr);
  auto it = object.find(key);
  return it == object.end() ? *kNull : *it;
}

absl::StatusOr<nlohmann::json> ParseJsonObject(const std::string& body) {
  using nlohmann::json;
  bool too_deep = false;
  // Lists and objects nested too deep are dropped as they are parsed, never built.
  const json::parser_callback_t depth_limit = [&too_deep](int depth, json::parse_event_t event,
                                                          json&) {
    if ((event == json::parse_event_t::object_start ||
         event == json::parse_event_t::array_start) &&
        depth > kMaxJsonDepth) {
      too_deep = true;
      return false;
    }
    return true;
  };
  json j = json::parse(body, depth_limit, /*allow_exceptions=*/false);
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat("body: nested deeper than ", kMaxJsonDepth, " levels"));
  }
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
