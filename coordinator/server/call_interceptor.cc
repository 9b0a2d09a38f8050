#include "coordinator/server/call_interceptor.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/logging.h>

#include <cstdio>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "coordinator/server/serving_context.h"

namespace switchyard {
namespace {

using grpc::experimental::InterceptionHookPoints;

// The full name of `method`'s request message ("/switchyard.v1.Switchyard/Complete" ->
// "switchyard.v1.GenerateRequest"); empty for a method not in the linked descriptors.
std::string RequestType(const char* method) {
  std::string name = method[0] == '/' ? method + 1 : method;
  absl::StrReplaceAll({{"/", "."}}, &name);
  const auto* m = google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(name);
  return m == nullptr ? std::string() : m->input_type()->full_name();
}

class CallInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(grpc::experimental::ServerRpcInfo* info, const ServingContext* ctx)
      : info_(info), ctx_(ctx) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      authorized_ = ctx_->AuthorizeMetadata(*methods->GetRecvInitialMetadata());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      unparsed_ = methods->GetRecvMessage() == nullptr;  // gRPC's mark of a failed parse
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status status = methods->GetSendStatus();
      // gRPC's own answer when the request bytes did not parse: our handlers never send
      // UNIMPLEMENTED without a message.
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
          status.error_message().empty() && info_->method() != nullptr &&
          (unparsed_ || RequestType(info_->method()).empty())) {
        if (RequestType(info_->method()).empty()) {  // a method no service of ours offers
          methods->ModifySendStatus(grpc::Status(
              grpc::StatusCode::UNIMPLEMENTED, absl::StrCat("unknown method ", info_->method())));
        } else if (!authorized_.ok()) {
          methods->ModifySendStatus(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                                 std::string(authorized_.message())));
        } else {
          methods->ModifySendStatus(UnparsableRequestStatus(info_->method()));
        }
      }
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* const info_;
  const ServingContext* const ctx_;
  absl::Status authorized_;
  bool unparsed_ = false;
};

class CallInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallInterceptorFactory(const ServingContext* ctx) : ctx_(ctx) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new CallInterceptor(info, ctx_);
  }

 private:
  const ServingContext* const ctx_;
};

void FilteredProtobufLog(google::protobuf::LogLevel level, const char* filename, int line,
                         const std::string& message) {
  // One line per malformed request would let any client flood the log; the client is told
  // instead (INVALID_ARGUMENT).
  if (message.find("contains invalid UTF-8 data when parsing") != std::string::npos) return;
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", kLevels[level], filename, line,
               message.c_str());
}

}  // namespace

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeCallInterceptors(const ServingContext* context) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> v;
  v.push_back(std::make_unique<CallInterceptorFactory>(context));
  return v;
}

void InstallProtobufLogFilter() {
  static std::once_flag once;
  std::call_once(once, [] { google::protobuf::SetLogHandler(&FilteredProtobufLog); });
}

grpc::Status UnparsableRequestStatus(const char* method) {
  std::string type = RequestType(method);
  if (type.empty()) type = "the method's request";
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("request: the bytes do not parse as ", type,
                                   " (malformed protobuf, or a string field that is not valid "
                                   "UTF-8: send such text as bytes or token ids)"));
}

}  // namespace switchyard
