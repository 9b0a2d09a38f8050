#include "coordinator/server/call_interceptor.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/log.h"
#include "coordinator/server/grpc_status.h"
#include "coordinator/server/request_id.h"
#include "coordinator/server/serving_context.h"
#include "switchyard/v1/switchyard.pb.h"

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

// INVALID_ARGUMENT for bytes that do not parse as `type` (a message's full name).
grpc::Status UnparsableStatus(const std::string& type) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("request: the bytes do not parse as ", type,
                                   " (malformed protobuf, or a string field that is not valid "
                                   "UTF-8: send such text as token ids, or to KServe as a BYTES tensor)"));
}

// UNIMPLEMENTED's message for a method whose service the binary links but does not serve.
std::string NotOfferedMessage(const char* method) {
  if (std::strncmp(method, "/grpc.reflection.", 17) == 0) {
    return absl::StrCat("unknown method ", method,
                        ": server reflection is off because --auth-token-file is set (it "
                        "cannot check the token); serve with --expose-reflection to offer it");
  }
  return absl::StrCat("unknown method ", method, ": this server does not offer its service");
}

class CallInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(grpc::experimental::ServerRpcInfo* info, const ServingContext* ctx)
      : info_(info), ctx_(ctx), start_(std::chrono::steady_clock::now()) {
    const char* m = info->method() != nullptr ? info->method() : "";
    // Probes and reflection would flood the access log.
    logged_ = std::strncmp(m, "/grpc.", 6) != 0;
    method_ = m[0] == '/' ? m + 1 : m;
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      const auto& metadata = *methods->GetRecvInitialMetadata();
      authorized_ = ctx_->AuthorizeMetadata(metadata);
      auto it = metadata.find("x-request-id");
      request_id_ = it != metadata.end() &&
                            ValidRequestId(std::string_view(it->second.data(), it->second.size()))
                        ? std::string(it->second.data(), it->second.size())
                        : NewRequestId();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      if (request_id_.empty()) request_id_ = NewRequestId();
      methods->GetSendInitialMetadata()->emplace("x-request-id", request_id_);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      NoteResponse(methods->GetSendMessage());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      unparsed_ = methods->GetRecvMessage() == nullptr;  // gRPC's mark of a failed parse
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status status = methods->GetSendStatus();
      // gRPC's own answer for a request that did not parse, or for a method no service of
      // ours offers: UNIMPLEMENTED without a message (our handlers always give one).
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
          status.error_message().empty() && info_->method() != nullptr) {
        const std::string type = RequestType(info_->method());
        if (type.empty()) {
          methods->ModifySendStatus(grpc::Status(
              grpc::StatusCode::UNIMPLEMENTED, absl::StrCat("unknown method ", info_->method())));
        } else if (unparsed_ && !authorized_.ok()) {
          methods->ModifySendStatus(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                                 std::string(authorized_.message())));
        } else if (unparsed_) {
          methods->ModifySendStatus(UnparsableStatus(type));
        } else {
          // A method linked into the binary whose service this server does not offer.
          methods->ModifySendStatus(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                                 NotOfferedMessage(info_->method())));
        }
      }
      if (logged_) LogAccess(methods->GetSendStatus());
    }
    methods->Proceed();
  }

 private:
  // Token counts and the first message's time, from the responses of the generation methods.
  void NoteResponse(const void* message) {
    const auto now = std::chrono::steady_clock::now();
    if (!first_message_.has_value()) first_message_ = now;
    if (message == nullptr) return;  // already serialized: nothing to read
    if (method_ == "switchyard.v1.Switchyard/Generate") {
      const auto* r = static_cast<const v1::GenerateResponse*>(message);
      if (r->prompt_tokens() > 0) prompt_tokens_ = r->prompt_tokens();
      if (r->completion_tokens() > 0) completion_tokens_ = r->completion_tokens();
    } else if (method_ == "switchyard.v1.Switchyard/Complete") {
      const auto* r = static_cast<const v1::CompleteResponse*>(message);
      prompt_tokens_ = r->prompt_tokens();
      completion_tokens_ = r->completion_tokens();
    }
  }

  void LogAccess(const grpc::Status& status) {
    using Ms = std::chrono::duration<double, std::milli>;
    const auto now = std::chrono::steady_clock::now();
    std::string counts;
    if (prompt_tokens_ >= 0) {
      counts = absl::StrFormat(" prompt_tokens=%d completion_tokens=%d", prompt_tokens_,
                               std::max(completion_tokens_, 0));
    }
    std::string ttft;
    if (first_message_.has_value() && status.ok()) {
      ttft = absl::StrFormat(" first_response_ms=%.1f", Ms(*first_message_ - start_).count());
    }
    const std::string code = StatusCodeName(status.error_code());
    ctx_->metrics()->CountRequest("grpc", method_, code);
    spdlog::info("access: id={} peer={} method={} status={}{}{} total_ms={:.1f}", request_id_,
                 info_->server_context()->peer(), method_, code, counts, ttft,
                 Ms(now - start_).count());
  }

  grpc::experimental::ServerRpcInfo* const info_;
  const ServingContext* const ctx_;
  const std::chrono::steady_clock::time_point start_;
  std::optional<std::chrono::steady_clock::time_point> first_message_;
  std::string method_;
  std::string request_id_;
  bool logged_ = false;
  int prompt_tokens_ = -1;
  int completion_tokens_ = -1;
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
  static const spdlog::level::level_enum kLevels[] = {spdlog::level::info, spdlog::level::warn,
                                                     spdlog::level::err, spdlog::level::critical};
  spdlog::log(kLevels[level], "libprotobuf {}:{}: {}", filename, line, message);
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

}  // namespace switchyard
