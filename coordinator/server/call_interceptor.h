// A gRPC server interceptor for what every call shares and no handler of ours can see:
// request ids, the access log, and requests whose bytes do not parse as the method's message.
//
//   builder.experimental().SetInterceptorCreators(MakeCallInterceptors(context));
//
// gRPC parses a request before the handler runs and, when that fails (malformed protobuf, or
// a proto3 string field that is not valid UTF-8), ends the call UNIMPLEMENTED with an empty
// message. The interceptor turns that status into INVALID_ARGUMENT naming the message type,
// or UNAUTHENTICATED when authentication is on and the call has no valid token (so a
// malformed request learns nothing more than any other unauthenticated one).
//
// Request ids: a client's `x-request-id` metadata (printable ASCII, at most 128 bytes) is
// kept, otherwise one is generated; either way the response's initial metadata carries it.
//
// Access log: one line per call (health checks and reflection aside), when it ends:
//   ... rank 0 info: access: id=7f3a...-2a peer=ipv4:127.0.0.1:40312
//       method=switchyard.v1.Switchyard/Generate status=OK prompt_tokens=6
//       completion_tokens=13 first_response_ms=3.1 total_ms=24.8
// (first_response_ms: the first message sent, the time to first token of a stream.)
//
// InstallProtobufLogFilter() keeps libprotobuf from writing an ERROR line to the log for every
// such request (a client could otherwise flood it); other libprotobuf messages still print.
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <vector>

namespace switchyard {

class ServingContext;

// `context` is borrowed and must outlive the server.
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeCallInterceptors(const ServingContext* context);

// Process-wide; idempotent.
void InstallProtobufLogFilter();

}  // namespace switchyard
