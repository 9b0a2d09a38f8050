// How the client-side commands (`switchyard client`, `switchyard loadgen`) reach a server:
// target, TLS (server verification, optional client certificate), bearer token, request id.
//
//   ClientFlags f;  AddClientFlags(cmd, &f);               // registers --target, --tls-ca, ...
//   ASSIGN_OR_RETURN(ClientConnection c, ClientConnection::Open(f));
//   grpc::ClientContext ctx;  c.Prepare(&ctx);              // token, request id, deadline
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace switchyard::cli {

struct ClientFlags {
  std::string target = "127.0.0.1:50051";
  std::string tls_ca;           // PEM roots: TLS when set (or when tls_cert is)
  std::string tls_cert;         // PEM client certificate (mutual TLS), with tls_key
  std::string tls_key;
  std::string tls_server_name;  // name expected in the server's certificate
  std::string token_file;       // bearer token (the server's --auth-token-file)
  std::string request_id;       // x-request-id to send
  double timeout_s = 120;       // deadline of each call
};

// Registers the flags above on `cmd` (--target required when `target_required`; no
// --request-id unless `request_id`: a load generator's requests each get the server's own).
void AddClientFlags(CLI::App* cmd, ClientFlags* flags, bool target_required = false,
                    bool request_id = true);

// The bearer token in `path` with trailing whitespace removed; "" when `path` is empty.
// Errors (unreadable, empty) name `flag`.
absl::StatusOr<std::string> ReadBearerToken(const std::string& path,
                                            const std::string& flag = "--token-file");

class ClientConnection {
 public:
  // Errors (naming the flag): unreadable TLS or token files, --tls-cert without --tls-key.
  static absl::StatusOr<ClientConnection> Open(const ClientFlags& flags);
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // Adds the token, the request id and the deadline to a call.
  void Prepare(grpc::ClientContext* ctx) const;

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::string token_;
  std::string request_id_;
  double timeout_s_ = 120;
};

// "INVALID_ARGUMENT: text: ... (request id 8ea1...-3)": a failed call for the log.
std::string DescribeFailure(const grpc::Status& status, const grpc::ClientContext& ctx);

}  // namespace switchyard::cli
