// The one conversion from absl::Status (used everywhere inside Switchyard) to grpc::Status
// (used only at the gRPC layer).
#pragma once

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace switchyard {

// Same code (absl and gRPC share the canonical code numbering) and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The canonical name of a gRPC status code ("UNAVAILABLE"); CODE_<n> for one outside 0..16.
std::string StatusCodeName(grpc::StatusCode code);

}  // namespace switchyard
