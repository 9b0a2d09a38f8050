#include "coordinator/server/grpc_status.h"

#include <string>

namespace switchyard {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  int code = static_cast<int>(status.code());
  // Both enums use the canonical google.rpc.Code numbering 0..16; anything else is UNKNOWN.
  grpc::StatusCode grpc_code =
      code >= 0 && code <= 16 ? static_cast<grpc::StatusCode>(code) : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, std::string(status.message()));
}

std::string StatusCodeName(grpc::StatusCode code) {
  const int n = static_cast<int>(code);
  if (n < 0 || n > 16) return "CODE_" + std::to_string(n);
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(n));  // the same numbering
}

}  // namespace switchyard
