// Request ids, shared by the gRPC and HTTP front ends: a client's own id (gRPC metadata or
// HTTP header `x-request-id`) is kept when valid, otherwise the server makes one; either way
// the response carries it and the access log shows it.
#pragma once

#include <string>
#include <string_view>

namespace switchyard {

// A request id a client may choose: printable ASCII without spaces, at most 128 bytes.
bool ValidRequestId(std::string_view id);

// A new id, unique within the process and (with high probability) across restarts:
// "<16 hex digits of this process>-<counter in hex>". Thread-safe.
std::string NewRequestId();

}  // namespace switchyard
