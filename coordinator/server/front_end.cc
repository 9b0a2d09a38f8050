#include "coordinator/server/front_end.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "coordinator/server/call_interceptor.h"
#include "coordinator/server/http_front_end.h"
#include "coordinator/server/kserve_service.h"
#include "coordinator/server/serving_context.h"
#include "coordinator/server/serving_metrics.h"
#include "coordinator/server/switchyard_service.h"

namespace switchyard {
namespace {

// The services whose health is reported, besides the whole server ("").
constexpr const char* kHealthServices[] = {"", "switchyard.v1.Switchyard",
                                           "inference.GRPCInferenceService"};

// Process-wide gRPC setting; only affects servers built afterwards.
void InitGrpcPluginsOnce() {
  static std::once_flag once;
  std::call_once(once, [] { grpc::EnableDefaultHealthCheckService(true); });
}

// Server reflection on this server or not. Linking gRPC's reflection library registers its
// plugin for every server of the process (a static initializer); this option removes it and
// adds it back only where wanted.
class ReflectionOption final : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(bool enable) : enable_(enable) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    grpc::reflection::ProtoServerReflectionPlugin probe;
    std::erase_if(*plugins, [&probe](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
      return p->name() == probe.name();
    });
    if (enable_) {
      plugins->push_back(std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>());
    }
  }

 private:
  const bool enable_;
};

// The certificate chain and key, read once and checked (see CheckTlsFiles).
absl::StatusOr<grpc::SslServerCredentialsOptions::PemKeyCertPair> LoadTlsPair(
    const std::string& cert, const std::string& key, const std::string& cert_name,
    const std::string& key_name) {
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_name, " and ", key_name, ": give both PEM files, or neither"));
  }
  ASSIGN_OR_RETURN(std::string cert_pem, ReadFileToString(cert, cert_name));
  ASSIGN_OR_RETURN(std::string key_pem, ReadFileToString(key, key_name));
  auto bio = [](const std::string& pem) {
    return std::unique_ptr<BIO, decltype(&BIO_free)>(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  };
  auto cert_bio = bio(cert_pem);
  std::unique_ptr<X509, decltype(&X509_free)> x509(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (x509 == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_name, ": ", cert, " holds no PEM certificate"));
  }
  auto key_bio = bio(key_pem);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
  if (pkey == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        key_name, ": ", key, " holds no PEM private key (or it is encrypted; give it unencrypted)"));
  }
  if (X509_check_private_key(x509.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(key_name, ": the private key in ", key,
                                                   " does not match the certificate in ", cert,
                                                   " (", cert_name, ")"));
  }
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  pair.cert_chain = std::move(cert_pem);
  pair.private_key = std::move(key_pem);
  return pair;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(
    const ServingFrontEnd::Options& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("tls_client_ca: mutual TLS needs tls_cert and tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  ASSIGN_OR_RETURN(auto pair, LoadTlsPair(o.tls_cert, o.tls_key, "tls_cert", "tls_key"));
  grpc::SslServerCredentialsOptions ssl;
  if (!o.tls_client_ca.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFileToString(o.tls_client_ca, "tls_client_ca"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::Status CheckTlsFiles(const std::string& cert, const std::string& key,
                           const std::string& cert_name, const std::string& key_name) {
  if (cert.empty() && key.empty()) return absl::OkStatus();
  return LoadTlsPair(cert, key, cert_name, key_name).status();
}

ServingFrontEnd::ServingFrontEnd(GenerationQueue* queue, const Tokenizer* tokenizer,
                                 const ModelConfig& config,
                                 std::function<ClusterStatusInfo()> cluster_status,
                                 ServingTopology topology, Options options)
    : options_(std::move(options)),
      owned_metrics_(options_.metrics == nullptr ? std::make_unique<ServingMetrics>() : nullptr),
      context_(std::make_unique<ServingContext>(ServingContextArgs{
          .queue = queue,
          .tokenizer = tokenizer,
          .config = config,
          .model_name = options_.model_name,
          .topology = topology,
          .cluster_status = std::move(cluster_status),
          .auth_token = options_.auth_token,
          .metrics = options_.metrics != nullptr ? options_.metrics : owned_metrics_.get()})),
      switchyard_service_(std::make_unique<SwitchyardService>(context_.get())),
      kserve_service_(std::make_unique<KServeService>(context_.get())) {}

ServingFrontEnd::~ServingFrontEnd() { Shutdown(absl::Now()); }

absl::Status ServingFrontEnd::Start() {
  if (options_.model_name.empty()) {
    return absl::InvalidArgumentError("model_name: the served model needs a name");
  }
  if (options_.max_message_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: must be >= 1, got ", options_.max_message_bytes));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds, Credentials(options_));

  std::lock_guard lock(mu_);
  if (server_ != nullptr || shut_down_) {
    return absl::FailedPreconditionError("the serving front end was already started");
  }
  InitGrpcPluginsOnce();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, creds, &port);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  // Without this Linux lets a second server bind a port in use (SO_REUSEPORT), silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.experimental().SetInterceptorCreators(MakeCallInterceptors(context_.get()));
  builder.SetOption(std::make_unique<ReflectionOption>(options_.auth_token.empty() ||
                                                       options_.expose_reflection));
  InstallProtobufLogFilter();
  builder.RegisterService(switchyard_service_.get());
  builder.RegisterService(kserve_service_.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    if (server != nullptr) server->Shutdown();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen,
                     ": the address is in use, not local, or malformed (want host:port)"));
  }
  if (!options_.http_listen.empty()) {
    auto http = std::make_unique<HttpFrontEnd>(
        context_.get(),
        HttpFrontEnd::Options{.listen = options_.http_listen,
                              .tls_cert = options_.tls_cert,
                              .tls_key = options_.tls_key,
                              .tls_client_ca = options_.tls_client_ca,
                              .max_body_bytes = static_cast<size_t>(options_.max_message_bytes),
                              .threads = options_.http_threads,
                              .chat_template = options_.chat_template,
                              .default_max_tokens = options_.default_max_tokens});
    if (absl::Status st = http->Start(); !st.ok()) {
      server->Shutdown();
      return st;
    }
    http_ = std::move(http);
  }
  server_ = std::move(server);
  bound_port_ = port;
  SetHealthLocked(false);  // the default health service starts out SERVING
  return absl::OkStatus();
}

void ServingFrontEnd::SetHealthLocked(bool serving) {
  if (server_ == nullptr || shut_down_) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  for (const char* service : kHealthServices) health->SetServingStatus(service, serving);
}

void ServingFrontEnd::SetReady(bool ready) {
  std::lock_guard lock(mu_);
  context_->set_ready(ready);
  SetHealthLocked(ready && !context_->draining());
}

void ServingFrontEnd::Drain() {
  std::lock_guard lock(mu_);
  context_->set_draining();
  SetHealthLocked(false);
}

void ServingFrontEnd::Fail(const absl::Status& why) {
  std::lock_guard lock(mu_);
  context_->set_failed(why);
  SetHealthLocked(false);
}

void ServingFrontEnd::Shutdown(absl::Time deadline) {
  grpc::Server* server = nullptr;
  HttpFrontEnd* http = nullptr;
  {
    std::lock_guard lock(mu_);
    context_->set_draining();
    SetHealthLocked(false);
    if (server_ == nullptr || shut_down_) return;
    shut_down_ = true;
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->Shutdown();
    }
    server = server_.get();
    http = http_.get();
  }
  // Blocks until every call finished; calls still running at the deadline are cancelled.
  server->Shutdown(absl::ToChronoTime(deadline));
  server->Wait();
  if (http != nullptr) http->Stop();
}

uint64_t ServingFrontEnd::large_requests() const { return context_->large_requests(); }

int ServingFrontEnd::http_bound_port() const {
  std::lock_guard lock(mu_);
  return http_ == nullptr ? 0 : http_->bound_port();
}

int ServingFrontEnd::bound_port() const {
  std::lock_guard lock(mu_);
  return bound_port_;
}

}  // namespace switchyard
