// "host:port" as the serving flags take it (--listen, --http-listen).
//
//   ASSIGN_OR_RETURN(HostPort hp, SplitHostPort("[::1]:8080", "--http-listen"));
//   // hp.host == "::1", hp.port == 8080
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace switchyard {

struct HostPort {
  std::string host;  // without the brackets of an IPv6 literal
  int port = 0;      // 0: any free port
};

// Splits "host:port" or "[v6]:port". Errors (kInvalidArgument, the message starting with
// `flag` and the value): no host or no colon; a port that is not a number in 0-65535 (gRPC
// would otherwise take it modulo 65536).
absl::StatusOr<HostPort> SplitHostPort(const std::string& listen, const std::string& flag);

// Whether `host` names the loopback interface only (localhost, ::1, 127.x.y.z).
bool IsLoopbackHost(const std::string& host);

// This machine's host name (gethostname), or "unknown-host" when it cannot be had.
std::string HostName();

}  // namespace switchyard
