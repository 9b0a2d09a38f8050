#include "coordinator/server/serving_context.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace switchyard {
namespace {

// Compares without an early exit, so the time taken does not reveal how much of the token
// matched (only whether the lengths differ).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  }
  return diff == 0;
}

}  // namespace

ServingContext::ServingContext(ServingContextArgs args)
    : args_(std::move(args)), pool_(/*threads=*/2, /*max_pending=*/1024) {
  validation_.tokenizer = args_.tokenizer;
  validation_.config = &args_.config;
  validation_.model_name = args_.model_name;
}

absl::Status ServingContext::Authorize(const grpc::CallbackServerContext& call) const {
  return AuthorizeMetadata(call.client_metadata());
}

absl::Status ServingContext::AuthorizeMetadata(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  if (args_.auth_token.empty()) return absl::OkStatus();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return AuthorizeValue(nullptr, "metadata");
  const absl::string_view value(it->second.data(), it->second.size());
  return AuthorizeValue(&value, "metadata");
}

absl::Status ServingContext::AuthorizeHeader(const std::string* authorization) const {
  if (args_.auth_token.empty()) return absl::OkStatus();
  if (authorization == nullptr) return AuthorizeValue(nullptr, "header");
  const absl::string_view value(*authorization);
  return AuthorizeValue(&value, "header");
}

absl::Status ServingContext::AuthorizeValue(const absl::string_view* value,
                                            const char* where) const {
  if (args_.auth_token.empty()) return absl::OkStatus();
  if (value == nullptr) {
    return absl::UnauthenticatedError(
        absl::StrCat("missing \"authorization: Bearer <token>\" ", where));
  }
  constexpr absl::string_view kScheme = "bearer ";
  if (value->size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(value->substr(0, kScheme.size()), kScheme) ||
      !ConstantTimeEquals(value->substr(kScheme.size()), args_.auth_token)) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return absl::OkStatus();
}

absl::Status ServingContext::AdmitGeneration(const grpc::CallbackServerContext& call) const {
  if (absl::Status s = Authorize(call); !s.ok()) return s;
  return Readiness();
}

absl::Status ServingContext::Readiness() const {
  if (failed_.load()) {
    std::lock_guard<std::mutex> lock(failure_mu_);
    return absl::UnavailableError(absl::StrCat("the cluster failed: ", failure_));
  }
  if (draining_.load()) return absl::UnavailableError("server is draining");
  if (!ready_.load()) return absl::UnavailableError("server is not ready");
  return absl::OkStatus();
}

void ServingContext::set_failed(const absl::Status& why) {
  {
    std::lock_guard<std::mutex> lock(failure_mu_);
    if (!failed_.load()) failure_ = std::string(why.message());
  }
  failed_.store(true);
  draining_.store(true);
}

absl::Status ServingContext::CheckText(size_t bytes, const std::string& field) const {
  if (bytes >= (256 << 10)) large_requests_.fetch_add(1, std::memory_order_relaxed);
  if (args_.tokenizer == nullptr) return absl::OkStatus();
  return CheckPromptBytes(bytes, validation_, field);
}

RequestBuilder ServingContext::Builder(GenerationParams params) const {
  return [this, params = std::move(params)]() { return BuildGenerateRequest(params, validation_); };
}

ClusterStatusInfo ServingContext::cluster_status() const {
  if (!args_.cluster_status) return ClusterStatusInfo{};
  return args_.cluster_status();
}

}  // namespace switchyard
