#include "cli/client_connection.h"

#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "coordinator/server/grpc_status.h"

namespace switchyard::cli {

void AddClientFlags(CLI::App* cmd, ClientFlags* f, bool target_required, bool request_id) {
  auto* target = cmd->add_option("--target", f->target, "Server address (host:port)");
  if (target_required) target->required();
  cmd->add_option("--tls-ca", f->tls_ca, "PEM CA bundle: connect with TLS, verify the server")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-cert", f->tls_cert, "PEM client certificate (mutual TLS; with --tls-key)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-key", f->tls_key, "PEM client private key")->check(CLI::ExistingFile);
  cmd->add_option("--tls-server-name", f->tls_server_name,
                  "Name to verify in the server's certificate (default: the target's host)");
  cmd->add_option("--token-file", f->token_file,
                  "File holding a bearer token (the server's --auth-token-file)");
  if (request_id) {
    cmd->add_option("--request-id", f->request_id,
                    "x-request-id to send (else the server makes one)");
  }
  cmd->add_option("--timeout", f->timeout_s, "Deadline of each call in seconds")
      ->check(CLI::Range(0.001, 86400.0));
}

absl::StatusOr<std::string> ReadBearerToken(const std::string& path, const std::string& flag) {
  if (path.empty()) return std::string();
  auto token = ReadFileToString(path, flag);
  if (!token.ok()) return token.status();
  absl::StripTrailingAsciiWhitespace(&*token);
  if (token->empty()) return absl::InvalidArgumentError(flag + ": " + path + " is empty");
  return token;
}

absl::StatusOr<ClientConnection> ClientConnection::Open(const ClientFlags& f) {
  ClientConnection c;
  auto token = ReadBearerToken(f.token_file);
  if (!token.ok()) return token.status();
  c.token_ = *token;
  c.request_id_ = f.request_id;
  c.timeout_s_ = f.timeout_s;
  if (f.tls_cert.empty() != f.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key: give both, or neither");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!f.tls_ca.empty() || !f.tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!f.tls_ca.empty()) {
      auto pem = ReadFileToString(f.tls_ca, "--tls-ca");
      if (!pem.ok()) return pem.status();
      ssl.pem_root_certs = *pem;
    }
    if (!f.tls_cert.empty()) {
      auto cert = ReadFileToString(f.tls_cert, "--tls-cert");
      if (!cert.ok()) return cert.status();
      auto key = ReadFileToString(f.tls_key, "--tls-key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
    if (!f.tls_server_name.empty()) args.SetSslTargetNameOverride(f.tls_server_name);
  }
  c.channel_ = grpc::CreateCustomChannel(f.target, creds, args);
  return c;
}

void ClientConnection::Prepare(grpc::ClientContext* ctx) const {
  if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
  if (!request_id_.empty()) ctx->AddMetadata("x-request-id", request_id_);
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(timeout_s_ * 1e6)));
}

std::string DescribeFailure(const grpc::Status& status, const grpc::ClientContext& ctx) {
  std::string out = absl::StrCat(StatusCodeName(status.error_code()), ": ", status.error_message());
  const auto& md = ctx.GetServerInitialMetadata();
  if (auto it = md.find("x-request-id"); it != md.end()) {
    absl::StrAppend(&out, " (request id ", std::string(it->second.data(), it->second.size()), ")");
  }
  return out;
}

}  // namespace switchyard::cli
