// `switchyard client`: talks to a running `switchyard serve` without outside tools (grpcurl
// and grpc_health_probe are not in Debian 12):
//
//   switchyard client generate --prompt "The jury said that" [--max-tokens 32] [--json]
//   switchyard client complete --token-ids "1 415 2394" --max-tokens 8 --json
//   switchyard client tokenize --text "The jury"          switchyard client health
//   switchyard client status                                switchyard client info
//
// Every subcommand takes the connection flags of client_connection.h (--target, --tls-ca,
// --tls-cert/--tls-key, --token-file, --request-id, --timeout). Exit codes: 0 success (health:
// SERVING), 1 a failed call (printed as "CODE: message (request id ...)") or NOT_SERVING,
// 2 a usage error.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/client_connection.h"
#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/log.h"
#include "coordinator/server/proto_convert.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "switchyard/v1/switchyard.grpc.pb.h"

namespace switchyard::cli {
namespace {

using nlohmann::json;

struct ClientArgs {
  ClientFlags conn;
  bool json = false;
  // generate / complete
  std::string prompt;
  std::string token_ids;
  int max_tokens = 64;
  double temperature = 0;
  int top_k = 0;
  double top_p = 1;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool return_routing = false;
  // tokenize
  std::string text;
  bool no_bos = false;
  // health
  std::string service;
};

// The server's names (FinishReasonName), so `client` prints what `generate --json` prints.
const char* FinishName(v1::FinishReason r) {
  const std::optional<FinishReason> reason = FinishReasonFromProto(r);
  return reason.has_value() ? FinishReasonName(*reason) : "unspecified";
}

std::string RequestIdOf(const grpc::ClientContext& ctx) {
  const auto& md = ctx.GetServerInitialMetadata();
  auto it = md.find("x-request-id");
  return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
}

int CallFailed(const grpc::Status& status, const grpc::ClientContext& ctx) {
  spdlog::error("{}", DescribeFailure(status, ctx));
  return 1;
}

absl::StatusOr<v1::GenerateRequest> BuildRequest(const ClientArgs& a) {
  v1::GenerateRequest req;
  if (!a.prompt.empty() && !a.token_ids.empty()) {
    return absl::InvalidArgumentError("--prompt, --token-ids: give one of them");
  }
  if (!a.token_ids.empty()) {
    std::istringstream in(a.token_ids);
    long long id;
    while (in >> id) req.add_token_ids(static_cast<int32_t>(id));
    if (!in.eof() || req.token_ids_size() == 0) {
      return absl::InvalidArgumentError("--token-ids: want ids separated by spaces, e.g. \"1 415\"");
    }
  } else {
    if (a.prompt.empty()) return absl::InvalidArgumentError("--prompt or --token-ids: give one");
    req.set_text(a.prompt);
  }
  req.set_max_tokens(a.max_tokens);
  req.set_temperature(static_cast<float>(a.temperature));
  if (a.top_k > 0) req.set_top_k(a.top_k);
  if (a.top_p < 1) req.set_top_p(static_cast<float>(a.top_p));
  if (a.seed != 0) req.set_seed(a.seed);
  for (const std::string& s : a.stop) req.add_stop(s);
  if (a.ignore_eos) req.set_ignore_eos(true);
  if (a.return_routing) req.set_return_routing(true);
  return req;
}

// Appends a response's routing to out["routing"]: per token, per layer {experts, weights}.
void AddRouting(const google::protobuf::RepeatedPtrField<v1::TokenRouting>& routing, json* out) {
  for (const v1::TokenRouting& token : routing) {
    json layers = json::array();
    for (const v1::LayerRouting& l : token.layers()) {
      layers.push_back({{"experts", std::vector<int32_t>(l.experts().begin(), l.experts().end())},
                        {"weights", std::vector<float>(l.weights().begin(), l.weights().end())}});
    }
    (*out)["routing"].push_back(std::move(layers));
  }
}

// The routing as text: one line per generated token, each layer's experts with their weights.
void PrintRouting(const json& out) {
  const json& ids = out["token_ids"];
  for (size_t i = 0; i < out["routing"].size(); ++i) {
    std::cout << "token " << i << " (id " << (i < ids.size() ? ids[i].get<int32_t>() : -1) << "):";
    const json& layers = out["routing"][i];
    for (size_t l = 0; l < layers.size(); ++l) {
      std::cout << (l == 0 ? " " : " | ") << "L" << l;
      for (size_t k = 0; k < layers[l]["experts"].size(); ++k) {
        std::cout << " " << layers[l]["experts"][k].get<int32_t>() << " ("
                  << absl::StrFormat("%.2f", layers[l]["weights"][k].get<float>()) << ")";
      }
    }
    std::cout << "\n";
  }
}

int RunGenerate(const ClientArgs& a, bool stream) {
  auto conn = ClientConnection::Open(a.conn);
  if (!conn.ok()) return Fail(conn.status());
  auto req = BuildRequest(a);
  if (!req.ok()) return Fail(req.status());
  auto stub = v1::Switchyard::NewStub(conn->channel());
  grpc::ClientContext ctx;
  conn->Prepare(&ctx);
  json out = {{"text", ""}, {"token_ids", json::array()}};
  if (a.return_routing) out["routing"] = json::array();
  if (stream) {
    auto reader = stub->Generate(&ctx, *req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      for (int32_t id : msg.token_ids()) out["token_ids"].push_back(id);
      AddRouting(msg.routing(), &out);
      out["text"] = out["text"].get<std::string>() + msg.text();
      if (!a.json) std::cout << msg.text() << std::flush;
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        out["finish_reason"] = FinishName(msg.finish_reason());
        out["prompt_tokens"] = msg.prompt_tokens();
        out["completion_tokens"] = msg.completion_tokens();
      }
    }
    grpc::Status st = reader->Finish();
    if (!a.json) std::cout << "\n";
    if (!st.ok()) return CallFailed(st, ctx);
  } else {
    v1::CompleteResponse resp;
    grpc::Status st = stub->Complete(&ctx, *req, &resp);
    if (!st.ok()) return CallFailed(st, ctx);
    for (int32_t id : resp.token_ids()) out["token_ids"].push_back(id);
    AddRouting(resp.routing(), &out);
    out["text"] = resp.text();
    out["finish_reason"] = FinishName(resp.finish_reason());
    out["prompt_tokens"] = resp.prompt_tokens();
    out["completion_tokens"] = resp.completion_tokens();
    if (!a.json) std::cout << resp.text() << "\n";
  }
  out["request_id"] = RequestIdOf(ctx);
  if (a.json) {
    std::cout << out.dump() << "\n";
  } else {
    if (a.return_routing) PrintRouting(out);
    spdlog::info("{} tokens, finish: {}, request id {}", out.value("completion_tokens", 0),
                 out.value("finish_reason", std::string("?")), out["request_id"].get<std::string>());
  }
  return 0;
}

int RunTokenize(const ClientArgs& a) {
  auto conn = ClientConnection::Open(a.conn);
  if (!conn.ok()) return Fail(conn.status());
  auto stub = v1::Switchyard::NewStub(conn->channel());
  grpc::ClientContext ctx;
  conn->Prepare(&ctx);
  v1::TokenizeRequest req;
  req.set_text(a.text);
  if (a.no_bos) req.set_add_bos(false);
  v1::TokenizeResponse resp;
  grpc::Status st = stub->Tokenize(&ctx, req, &resp);
  if (!st.ok()) return CallFailed(st, ctx);
  std::vector<int32_t> ids(resp.token_ids().begin(), resp.token_ids().end());
  if (a.json) {
    std::cout << json{{"token_ids", ids}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  }
  return 0;
}

int RunHealth(const ClientArgs& a) {
  auto conn = ClientConnection::Open(a.conn);
  if (!conn.ok()) return Fail(conn.status());
  auto stub = grpc::health::v1::Health::NewStub(conn->channel());
  grpc::ClientContext ctx;
  conn->Prepare(&ctx);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(a.service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return CallFailed(st, ctx);
  const std::string name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
  if (a.json) {
    std::cout << json{{"service", a.service}, {"status", name}}.dump() << "\n";
  } else {
    std::cout << name << "\n";
  }
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

// status and info: the response as JSON (protobuf's mapping), pretty unless --json.
template <typename Request, typename Response, typename Method>
int RunJsonCall(const ClientArgs& a, Method method) {
  auto conn = ClientConnection::Open(a.conn);
  if (!conn.ok()) return Fail(conn.status());
  auto stub = v1::Switchyard::NewStub(conn->channel());
  grpc::ClientContext ctx;
  conn->Prepare(&ctx);
  Request req;
  Response resp;
  grpc::Status st = ((*stub).*method)(&ctx, req, &resp);
  if (!st.ok()) return CallFailed(st, ctx);
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = !a.json;
  opts.preserve_proto_field_names = true;
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(resp, &text, opts);
  std::cout << text << (a.json ? "\n" : "");
  return 0;
}

}  // namespace

void RegisterClient(CLI::App& app, Action* action) {
  static ClientArgs a;
  CLI::App* client = app.add_subcommand(
      "client", "Talk to a running server: generate, complete, tokenize, health, status, info");
  client->require_subcommand(1);
  auto common = [](CLI::App* cmd) {
    AddClientFlags(cmd, &a.conn);
    cmd->add_flag("--json", a.json, "Print one JSON object");
  };
  for (const bool stream : {true, false}) {
    CLI::App* cmd = client->add_subcommand(
        stream ? "generate" : "complete",
        stream ? "Stream a generation (text as it arrives)" : "One generation, whole (unary)");
    common(cmd);
    cmd->add_option("--prompt", a.prompt, "Prompt text");
    cmd->add_option("--token-ids", a.token_ids, "Prompt as token ids: \"1 415 2394\"");
    cmd->add_option("--max-tokens", a.max_tokens, "Most tokens to generate")
        ->check(CLI::Range(1, 1 << 30));
    cmd->add_option("--temperature", a.temperature, "Sampling temperature (0: greedy)");
    cmd->add_option("--top-k", a.top_k, "Top-k (0: off)");
    cmd->add_option("--top-p", a.top_p, "Top-p (1: off)");
    cmd->add_option("--seed", a.seed, "Sampler seed");
    cmd->add_option("--stop", a.stop, "Stop string (repeatable)");
    cmd->add_flag("--ignore-eos", a.ignore_eos, "Generate past end-of-sequence");
    cmd->add_flag("--return-routing", a.return_routing,
                  "Each generated token's experts and weights per layer (after the text, or "
                  "\"routing\" with --json)");
    cmd->callback([action, stream] { *action = [stream] { return RunGenerate(a, stream); }; });
  }
  CLI::App* tok = client->add_subcommand("tokenize", "Token ids of a text");
  common(tok);
  tok->add_option("--text", a.text, "Text to tokenize")->required();
  tok->add_flag("--no-bos", a.no_bos, "Without the BOS id");
  tok->callback([action] { *action = [] { return RunTokenize(a); }; });
  CLI::App* health = client->add_subcommand(
      "health", "grpc.health.v1 check: prints SERVING (exit 0) or NOT_SERVING (exit 1)");
  common(health);
  health->add_option("--service", a.service, "Service to check (default: the whole server)");
  health->callback([action] { *action = [] { return RunHealth(a); }; });
  CLI::App* status = client->add_subcommand("status", "GetClusterStatus as JSON");
  common(status);
  status->callback([action] {
    *action = [] {
      return RunJsonCall<v1::GetClusterStatusRequest, v1::GetClusterStatusResponse>(
          a, &v1::Switchyard::Stub::GetClusterStatus);
    };
  });
  CLI::App* info = client->add_subcommand("info", "GetModelInfo as JSON");
  common(info);
  info->callback([action] {
    *action = [] {
      return RunJsonCall<v1::GetModelInfoRequest, v1::GetModelInfoResponse>(
          a, &v1::Switchyard::Stub::GetModelInfo);
    };
  });
}

}  // namespace switchyard::cli
