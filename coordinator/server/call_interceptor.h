// A gRPC server interceptor for what no handler of ours can see: requests whose bytes do not
// parse as the method's message.
//
//   builder.experimental().SetInterceptorCreators(MakeCallInterceptors(context));
//
// gRPC parses a request before the handler runs and, when that fails (malformed protobuf, or
// a proto3 string field that is not valid UTF-8), ends the call UNIMPLEMENTED with an empty
// message. The interceptor turns that status into INVALID_ARGUMENT naming the message type,
// or UNAUTHENTICATED when authentication is on and the call has no valid token (so a
// malformed request learns nothing more than any other unauthenticated one).
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

// The status a call whose request did not parse ends with (exposed for tests): kInvalid
// argument naming the request type of `method` ("/switchyard.v1.Switchyard/Complete").
grpc::Status UnparsableRequestStatus(const char* method);

}  // namespace switchyard
