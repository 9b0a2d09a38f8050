// switchyard trace: the router's choices for every token of a text, as JSON lines.
//
//   switchyard trace --model models/brown-moe --file text.txt --out trace.jsonl
//   mpirun -np 4 ... switchyard trace --model ... --ep 2 --pp 2 --file text.txt --out t.jsonl
//
// The first line describes the model; then one line per token of the text (BOS included):
//   {"model":"brown-moe","layers":4,"experts":8,"top_k":2,"tokens":57}
//   {"position":3,"token_id":2394,"token":"▁said","experts":[[5,1],...],"weights":[[0.61,0.39],...]}
// experts[l] are layer l's top-k choices by descending weight, weights[l] their mixing weights
// (summing to 1). The routing of a row is what the model computed for that token with the
// text before it; it does not depend on EP x PP (the same trace as one rank, up to float
// rounding at near-ties). launch/plot_load.py --trace draws the per-layer load of a trace.
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "coordinator/model_session.h"
#include "coordinator/sequence_runner.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

struct TraceArgs {
  RunFlags run;
  std::string file;
  std::string tokens;
  std::string out;
};

absl::StatusOr<std::vector<int32_t>> TraceTokens(const TraceArgs& a, const ModelSession& s) {
  if (!a.tokens.empty()) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseTokenList(a.tokens));
    for (int32_t id : ids) {
      if (id < 0 || id >= s.config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tokens: id ", id, " outside [0, ", s.config.vocab_size, ")"));
      }
    }
    return ids;
  }
  if (s.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "trace --file needs tokenizer.model beside the checkpoint (--tokens takes ids)");
  }
  std::ifstream in(a.file);
  if (!in) return absl::NotFoundError("--file: cannot read " + a.file);
  std::stringstream text;
  text << in.rdbuf();
  std::vector<int32_t> ids = s.tokenizer->Encode(text.str(), /*add_bos=*/true);
  if (ids.size() < 2) return absl::InvalidArgumentError("--file: " + a.file + " has no text");
  if (static_cast<int>(ids.size()) > s.config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--file: ", a.file, " is ", ids.size(), " tokens, over the model's context of ",
        s.config.max_position_embeddings, "; trace a shorter text"));
  }
  return ids;
}

int RunTrace(const TraceArgs& a) {
  if (a.file.empty() == a.tokens.empty()) {
    return Fail(absl::InvalidArgumentError("trace: give exactly one of --file and --tokens"));
  }
  auto session = ModelSession::Open(ToSessionOptions(a.run, true));
  if (!session.ok()) return Fail(session.status());
  ModelSession& s = **session;
  if (!s.is_coordinator()) return WorkerMain(s);
  auto ids = TraceTokens(a, s);
  if (!ids.ok()) return Finish(s, Fail(ids.status()));
  std::ofstream out(a.out);
  if (!out) return Finish(s, Fail(absl::PermissionDeniedError("--out: cannot write " + a.out)));

  const int L = s.config.num_hidden_layers, K = s.config.num_experts_per_tok;
  out << nlohmann::ordered_json{{"model", ModelDirName(a.run.model)},
                        {"layers", L},
                        {"experts", s.config.num_local_experts},
                        {"top_k", K},
                        {"tokens", ids->size()}}
             .dump()
      << "\n";
  SequenceRunner runner(s.executor.get(), s.allocator(0), s.config);
  absl::Status st =
      runner.Route(*ids, [&](int first, int rows, const int32_t* experts, const float* weights) {
        for (int r = 0; r < rows; ++r) {
          const int pos = first + r;
          nlohmann::ordered_json e = nlohmann::ordered_json::array(), w = nlohmann::ordered_json::array();
          for (int l = 0; l < L; ++l) {
            const size_t at = (static_cast<size_t>(r) * L + l) * K;
            e.push_back(std::vector<int32_t>(experts + at, experts + at + K));
            w.push_back(std::vector<float>(weights + at, weights + at + K));
          }
          nlohmann::ordered_json line = {{"position", pos}, {"token_id", (*ids)[pos]}};
          if (s.tokenizer != nullptr) line["token"] = s.tokenizer->Piece((*ids)[pos]);
          line["experts"] = std::move(e);
          line["weights"] = std::move(w);
          out << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
        }
      });
  out.flush();
  if (st.ok() && !out) st = absl::DataLossError("--out: writing " + a.out + " failed");
  if (!st.ok()) return Finish(s, Fail(st));
  spdlog::info("traced the routing of {} tokens through {} layers (top-{}) to {}", ids->size(), L,
               K, a.out);
  return Finish(s, 0);
}

}  // namespace

void RegisterTrace(CLI::App& app, Action* action) {
  static TraceArgs a;
  CLI::App* cmd = app.add_subcommand(
      "trace", "Write the router's choices (experts and weights per layer) for every token");
  AddRunFlags(cmd, &a.run);
  cmd->add_option("--file", a.file, "Text file to trace (tokenized with BOS)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tokens", a.tokens, "Token ids to trace instead, space or comma separated");
  cmd->add_option("--out", a.out, "Output file (JSON lines)")->required();
  cmd->callback([action] { *action = [] { return RunTrace(a); }; });
}

}  // namespace switchyard::cli
