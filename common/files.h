// Reading small files whole (tokens, PEM certificates and keys).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace switchyard {

// The file's bytes. Error: kNotFound "WHAT: cannot read PATH" (`what` names the flag or
// option the path came from).
absl::StatusOr<std::string> ReadFileToString(const std::string& path, const std::string& what);

}  // namespace switchyard
