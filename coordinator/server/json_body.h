// Request bodies of the HTTP APIs as JSON, refused precisely when they are not.
//
//   ASSIGN_OR_RETURN(nlohmann::json body, ParseJsonObject(req.body));
//   if (!body["n"].is_number_integer()) return JsonWrongType("n", "an integer", body["n"]);
//
// Thread-safe (no shared state).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace switchyard {

// How deep a body's lists and objects may nest: the parser does not recurse, but walking,
// copying or printing a value does, and a 4 MiB body of "[[[[..." is two million levels.
inline constexpr int kMaxJsonDepth = 64;

// The body as a JSON object. Errors: kInvalidArgument "body: not valid JSON: <where and
// why>" (bad UTF-8 included), "body: nested deeper than 64 levels" or "body: must be a JSON
// object, got a list".
absl::StatusOr<nlohmann::json> ParseJsonObject(const std::string& body);

// The member `key` of `object`, or null when absent or when `object` is not an object: a
// reference, never a copy.
const nlohmann::json& JsonField(const nlohmann::json& object, const char* key);

// The JSON type of `v` in an API's words: "a string", "an integer", "a list", "null", ...
std::string JsonTypeName(const nlohmann::json& v);

// kInvalidArgument "<field>: must be <want>, got <type of got>".
absl::Status JsonWrongType(const std::string& field, const std::string& want,
                           const nlohmann::json& got);

}  // namespace switchyard
