// `switchyard study simulate`: what a configuration would do on a described cluster, from the
// cost model (study/cost_model.h) and the real scheduler in virtual time (study/simulator.h).
// Needs no MPI and no device: the cluster comes from a hardware preset or from a calibration
// file written by `switchyard preflight`.
//
//   switchyard study simulate --preset mixtral-8x7b --hardware h100 --nodes 2 --ep 8 --pp 2
//       --batch 1,8,64 --context 512 --prefill 4096 --requests 500 --concurrency 64
//   switchyard study simulate --model models/brown-moe --calibration cal.json --ep 2 --pp 2
//   switchyard study plot --in study.jsonl --out plots/     (lines from simulate --append)
//   switchyard study sweep --spec sweep.json --out results.jsonl   (measured: study/sweep.py)
//
// Prints, per batch size, the decode step time and where it goes, tokens/s (per GPU too),
// S-MBU and S-MFU; the prefill time of one prompt; memory per rank and whether it fits; and
// with --requests, a serving run (TTFT, ITL, end-to-end and queue percentiles, throughput).
// --json prints the same as one JSON object.
//
// Exit codes: 0 simulated; 1 an input that cannot be used (a file, a configuration that does
// not fit with --require-fit); 2 usage.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/files.h"
#include "common/progress.h"
#include "coordinator/expert_balance.h"
#include "coordinator/placement.h"
#include "nlohmann/json.hpp"
#include "study/cost_model.h"
#include "study/simulator.h"

namespace switchyard::cli {
namespace {

using nlohmann::json;

// Jobs up to this many ranks get the rank x rank traffic matrix in the JSON.
constexpr int kPairBytesRanks = 64;

struct SimulateArgs {
  std::string model, preset, hardware, calibration, placement, expert_load, out, append;
  int layers = 0;
  int nodes = 0;           // 0: from --ranks-per-node and ep x pp
  int ranks_per_node = 0;  // 0: the preset's 8, or the calibration's
  int ep = 1, pp = 1;
  double skew = 0;
  std::string batches = "1,8,64";
  int context = 512;
  int prefill = 0;
  int max_step_tokens = 512;
  int requests = 0;
  int concurrency = 0;
  double rate = 0;
  double host_step_us = 0, host_token_us = 0, turnaround_us = 0;
  double host_cpu_step_us = 0, host_cpu_token_us = 0;
  std::string prompt_len = "512", output_len = "128";
  int max_running = 64;
  std::string kv_memory;  // per rank; default: what fits (a device with a capacity) or 1GiB
  int block_size = 16;
  uint64_t seed = 1;
  double launch_us = -1, step_overhead_us = -1;
  bool json = false;
  bool require_fit = false;
  bool no_shared_memory = false;
};

absl::StatusOr<LengthRange> ParseRange(const std::string& text, const char* flag) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  LengthRange r;
  try {
    if (parts.size() == 1) {
      r.min = r.max = std::stoi(parts[0]);
    } else if (parts.size() == 2) {
      r.min = std::stoi(parts[0]);
      r.max = std::stoi(parts[1]);
    } else {
      throw std::invalid_argument(text);
    }
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", text, " is not a length N or a range MIN:MAX"));
  }
  if (r.min < 1 || r.max < r.min || r.max > (1 << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", text, ": need 1 <= MIN <= MAX"));
  }
  return r;
}

absl::StatusOr<std::vector<int>> ParseBatches(const std::string& text) {
  std::vector<int> out;
  const std::vector<std::string> parts = absl::StrSplit(text, ',', absl::SkipEmpty());
  for (const std::string& p : parts) {
    int b = 0;
    try {
      size_t used = 0;
      b = std::stoi(p, &used);
      if (used != p.size()) throw std::invalid_argument(p);
    } catch (const std::exception&) {
      return absl::InvalidArgumentError(absl::StrCat("--batch: ", p, " is not an integer"));
    }
    if (b < 1 || b > (1 << 20)) {
      return absl::InvalidArgumentError(absl::StrCat("--batch: ", p, " is outside [1, 2^20]"));
    }
    out.push_back(b);
  }
  if (out.empty()) return absl::InvalidArgumentError("--batch: no batch size");
  return out;
}

json BreakdownJson(const StepBreakdown& b) {
  return {{"weights_s", b.weights_s},   {"attention_s", b.attention_s},
          {"dispatch_s", b.dispatch_s}, {"combine_s", b.combine_s},
          {"head_s", b.head_s},         {"control_s", b.control_s},
          {"bubble_s", b.bubble_s},     {"cores_s", b.cores_s},
          {"imbalance_s", b.imbalance_s}};
}

json PercentilesJson(const Percentiles& p) {
  return {{"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}};
}

absl::StatusOr<ModelConfig> ModelOf(const SimulateArgs& a) {
  ModelConfig cfg;
  if (!a.model.empty()) {
    auto loaded = LoadModelConfig(a.model + "/config.json");
    if (!loaded.ok()) return loaded.status();
    cfg = *loaded;
  } else {
    auto preset = ModelPreset(a.preset);
    if (!preset.ok()) return preset.status();
    cfg = *preset;
  }
  if (a.layers > 0) cfg.num_hidden_layers = a.layers;
  return cfg;
}

absl::StatusOr<ClusterModel> ClusterOf(const SimulateArgs& a) {
  ClusterModel c;
  if (!a.calibration.empty()) {
    auto text = ReadFileToString(a.calibration, "--calibration");
    if (!text.ok()) return text.status();
    json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat(a.calibration, ": not valid JSON"));
    }
    auto report = ParseCalibration(j);
    if (!report.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(a.calibration, ": ", report.status().message()));
    }
    auto cluster = ClusterFromCalibration(*report, a.calibration);
    if (!cluster.ok()) return cluster.status();
    c = *cluster;
    if (a.ranks_per_node > 0) c.ranks_per_node = a.ranks_per_node;
  } else {
    auto preset = HardwarePreset(a.hardware, a.ranks_per_node > 0 ? a.ranks_per_node : 8);
    if (!preset.ok()) return preset.status();
    c = *preset;
  }
  auto override = [&](DeviceModel& d) {
    if (a.launch_us >= 0) d.launch_s = a.launch_us * 1e-6;
    if (a.step_overhead_us >= 0) d.step_overhead_s = a.step_overhead_us * 1e-6;
  };
  override(c.device);
  for (DeviceModel& d : c.rank_devices) override(d);
  if (a.no_shared_memory) c.shared_memory_exchange = false;
  return c;
}

int RunSimulate(const SimulateArgs& a) {
  auto cfg = ModelOf(a);
  if (!cfg.ok()) return Fail(cfg.status());
  auto batches = ParseBatches(a.batches);
  if (!batches.ok()) return Fail(batches.status());
  auto cluster = ClusterOf(a);
  if (!cluster.ok()) return Fail(cluster.status());
  const int world = a.ep * a.pp;
  if (a.nodes > 0 && a.nodes * cluster->ranks_per_node != world) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--nodes ", a.nodes, " x ", cluster->ranks_per_node, " ranks per node = ",
        a.nodes * cluster->ranks_per_node, " ranks, but --ep ", a.ep, " x --pp ", a.pp, " = ",
        world)));
  }
  auto plan = a.placement.empty() ? PlanPlacement(*cfg, a.ep, a.pp)
                                  : LoadPlacementFile(a.placement, *cfg, a.ep, a.pp);
  if (!plan.ok()) return Fail(plan.status());
  RoutingModel routing = RoutingModel::Skewed(*cfg, a.skew);
  if (!a.expert_load.empty()) {
    auto load = LoadExpertLoads(a.expert_load, *cfg);
    if (!load.ok()) return Fail(load.status());
    auto r = RoutingModel::FromCounts(*cfg, *load);
    if (!r.ok()) return Fail(r.status());
    routing = *std::move(r);
  }
  const CostModel model(*cfg, *plan, *cluster, routing, a.max_step_tokens);
  const int nodes = (world + model.cluster().ranks_per_node - 1) / model.cluster().ranks_per_node;

  // KV: what fits on the device, or --kv-memory per rank (the serve default, 1 GiB, where the
  // device's capacity is unknown).
  int64_t kv_tokens = 0;
  if (!a.kv_memory.empty() || model.cluster().device.memory_bytes == 0) {
    auto bytes = ParseByteSizeFlag(a.kv_memory.empty() ? "1GiB" : a.kv_memory, false);
    if (!bytes.ok()) return Fail(bytes.status());
    kv_tokens = model.KvTokensIn(*bytes);  // the tightest rank decides
  } else {
    kv_tokens = model.KvTokensThatFit();
  }
  const std::vector<RankMemory> memory = model.Memory(kv_tokens);
  bool fits = kv_tokens >= cfg->max_position_embeddings / 8;
  for (const RankMemory& m : memory) fits = fits && m.fits();

  json j = {{"model", a.model.empty() ? a.preset : a.model},
            {"layers", cfg->num_hidden_layers},
            {"cluster", model.cluster().source},
            {"device", model.cluster().device.name},
            // Where the compute costs come from: the runtime's operations timed at this
            // model's shapes (preflight --model), or the device's multiply rates.
            {"costs", model.measured_operations() ? "operations" : "rates"},
            // How an EP group within one node exchanges rows (ClusterModel).
            {"exchange", model.cluster().shared_memory_exchange
                             ? "shared memory where an EP group is within one node"
                             : "all-to-all"},
            {"nodes", nodes},
            {"ranks_per_node", model.cluster().ranks_per_node},
            {"ep", a.ep},
            {"pp", a.pp},
            {"skew", a.skew},
            {"expert_load", a.expert_load},
            {"context", a.context}};
  json mem = json::array();
  for (const RankMemory& m : memory) {
    mem.push_back({{"weight_bytes", m.weight_bytes}, {"kv_bytes", m.kv_bytes},
                   {"buffer_bytes", m.buffer_bytes}, {"capacity", m.capacity},
                   {"fits", m.fits()}});
  }
  j["memory"] = {{"kv_tokens_per_dp", kv_tokens}, {"fits", fits}, {"ranks", mem}};

  json decode = json::array();
  for (int b : *batches) {
    const StepCost c = model.Step(DecodeStep(b, a.context, a.ep));
    const double tps = b / c.seconds;
    decode.push_back({{"batch", b},
                      {"step_s", c.seconds},
                      {"tokens_per_s", tps},
                      {"tokens_per_s_per_gpu", tps / world},
                      {"breakdown", BreakdownJson(c.breakdown)},
                      {"s_mbu", model.SparseMbu(c)},
                      {"s_mfu", model.SparseMfu(c)},
                      {"dispatch_bytes_per_step", [&] {
                         double s = 0;
                         for (const auto& row : c.pair_bytes) for (double x : row) s += x;
                         return s;
                       }()}});
    // The rank x rank matrix (dispatch + combine bytes per step, [from][to]) for a job small
    // enough to draw (study plot's heatmap).
    if (world <= kPairBytesRanks) decode.back()["pair_bytes"] = c.pair_bytes;
  }
  j["decode"] = decode;
  if (a.prefill > 0) {
    double seconds = 0, flops = 0, bytes = 0;
    const std::vector<StepShape> steps = PrefillSteps(a.prefill, a.max_step_tokens);
    for (const StepShape& s : steps) {
      const StepCost c = model.Step(s);
      seconds += c.seconds;
      flops += c.flops;
      bytes += c.weight_bytes_read + c.kv_bytes_read;
    }
    StepCost whole;
    whole.seconds = seconds;
    whole.flops = flops;
    j["prefill"] = {{"tokens", a.prefill},
                    {"steps", steps.size()},
                    {"seconds", seconds},
                    {"tokens_per_s", a.prefill / seconds},
                    {"s_mfu", model.SparseMfu(whole)}};
  }
  if (a.requests > 0) {
    auto prompt = ParseRange(a.prompt_len, "--prompt-len");
    if (!prompt.ok()) return Fail(prompt.status());
    auto output = ParseRange(a.output_len, "--output-len");
    if (!output.ok()) return Fail(output.status());
    const Workload w{.requests = a.requests,
                     .concurrency = a.rate > 0 ? 0 : std::max(1, a.concurrency),
                     .rate = a.rate,
                     .prompt = *prompt,
                     .output = *output,
                     .seed = a.seed,
                     .turnaround_s = a.turnaround_us * 1e-6};
    SchedulerOptions so;
    so.max_running = a.max_running;
    so.max_queue = std::max(256, a.requests);
    so.step_token_budget = a.max_step_tokens;
    so.prefill_chunk = std::min(256, a.max_step_tokens);
    const KvPool kv{.blocks_per_dp = static_cast<int>(std::min<int64_t>(kv_tokens / a.block_size, 1 << 30)),
                    .block_size = a.block_size};
    const HostCosts host{.step_s = a.host_step_us * 1e-6,
                         .token_s = a.host_token_us * 1e-6,
                         .cpu_step_s = a.host_cpu_step_us * 1e-6,
                         .cpu_token_s = a.host_cpu_token_us * 1e-6};
    auto r = SimulateServing(model, so, kv, w, host);
    if (!r.ok()) return Fail(r.status());
    j["serving"] = {{"requests", r->requests},
                    {"refused", r->refused},
                    {"concurrency", w.concurrency},
                    {"rate", w.rate},
                    {"seconds", r->seconds},
                    {"output_tokens", r->output_tokens},
                    {"output_tokens_per_s", r->output_tokens_per_s},
                    {"output_tokens_per_s_per_gpu", r->output_tokens_per_s_per_rank},
                    {"ttft_s", PercentilesJson(r->ttft)},
                    {"itl_s", PercentilesJson(r->itl)},
                    {"e2e_s", PercentilesJson(r->e2e)},
                    {"queue_s", PercentilesJson(r->queue)},
                    {"steps", r->steps},
                    {"mean_step_s", r->mean_step_s},
                    {"mean_host_s", r->mean_host_s},
                    {"mean_front_end_cores_s", r->mean_front_end_cores_s},
                    {"host", {{"step_s", host.step_s},
                              {"token_s", host.token_s},
                              {"cpu_step_s", host.cpu_step_s},
                              {"cpu_token_s", host.cpu_token_s},
                              {"turnaround_s", w.turnaround_s}}},
                    {"mean_tokens_per_step", r->mean_tokens_per_step},
                    {"mean_breakdown", BreakdownJson(r->mean_breakdown)},
                    {"s_mbu", r->s_mbu},
                    {"s_mfu", r->s_mfu},
                    {"rank_utilisation", r->rank_utilisation}};
  }
  if (!a.out.empty()) {
    std::ofstream out(a.out);
    out << j.dump(2) << "\n";
    if (!out) return Fail(absl::PermissionDeniedError(absl::StrCat("cannot write ", a.out)));
  }
  if (!a.append.empty()) {
    std::ofstream out(a.append, std::ios::app);
    out << j.dump() << "\n";
    if (!out) return Fail(absl::PermissionDeniedError(absl::StrCat("cannot write ", a.append)));
  }
  const int code = a.require_fit && !fits ? 1 : 0;
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return code;
  }

  std::printf("study simulate: %s, %d layers, on %s (%s)\n", j["model"].get<std::string>().c_str(),
              cfg->num_hidden_layers, model.cluster().device.name.c_str(),
              model.cluster().source.c_str());
  std::printf("  compute costs: %s\n",
              model.measured_operations()
                  ? "the runtime's operations, measured at this model's shapes"
                  : "multiply rates (no operations measured at this model's shapes)");
  std::printf("  expert exchange: %s\n", j["exchange"].get<std::string>().c_str());
  std::printf("  %d node(s) x %d ranks, ep %d x pp %d, routing %s\n", nodes,
              model.cluster().ranks_per_node, a.ep, a.pp,
              !a.expert_load.empty() ? ("from " + a.expert_load).c_str()
              : a.skew > 0           ? absl::StrCat("skew ", a.skew).c_str()
                                     : "uniform");
  const RankMemory* worst = &memory[0];
  for (const RankMemory& m : memory) {
    if (m.weight_bytes + m.buffer_bytes > worst->weight_bytes + worst->buffer_bytes) worst = &m;
  }
  std::printf("\nmemory, fullest rank: weights %s, buffers %s, KV %s (%lld positions per "
              "data-parallel index)%s%s\n",
              ByteProgress::FormatBytes(worst->weight_bytes).c_str(),
              ByteProgress::FormatBytes(worst->buffer_bytes).c_str(),
              ByteProgress::FormatBytes(worst->kv_bytes).c_str(), static_cast<long long>(kv_tokens),
              worst->capacity > 0
                  ? absl::StrCat(" of ", ByteProgress::FormatBytes(worst->capacity)).c_str()
                  : "",
              fits ? "" : ": DOES NOT FIT (weights, buffers and an eighth of a context)");
  std::printf("\ndecode, context %d (ms per step; parts on the mean stage's clock)\n", a.context);
  std::printf("%6s %9s %10s %9s | %7s %7s %7s %7s %7s %7s %7s %7s | %7s | %6s %6s\n", "batch",
              "step ms", "tokens/s", "per GPU", "weights", "attn", "dispat", "combine", "head",
              "control", "bubble", "cores", "(imbal)", "S-MBU", "S-MFU");
  for (const json& d : decode) {
    const json& b = d["breakdown"];
    auto ms = [&](const char* k) { return b[k].get<double>() * 1e3; };
    std::printf("%6d %9.3f %10.1f %9.1f | %7.3f %7.3f %7.3f %7.3f %7.3f %7.3f %7.3f %7.3f | "
                "%7.3f | %6.3f %6.3f\n",
                d["batch"].get<int>(), d["step_s"].get<double>() * 1e3,
                d["tokens_per_s"].get<double>(), d["tokens_per_s_per_gpu"].get<double>(),
                ms("weights_s"), ms("attention_s"), ms("dispatch_s"), ms("combine_s"),
                ms("head_s"), ms("control_s"), ms("bubble_s"), ms("cores_s"),
                ms("imbalance_s"),
                d["s_mbu"].get<double>(), d["s_mfu"].get<double>());
  }
  std::printf("  cores: waiting for a core (a node's ranks run more threads than it has CPUs)\n");
  std::printf("  (imbal): of weights and attention, the slowest EP rank's excess over the mean\n");
  if (j.contains("prefill")) {
    const json& p = j["prefill"];
    std::printf("\nprefill: %d tokens in %zu step(s): %.3f ms, %.0f tokens/s, S-MFU %.3f\n",
                a.prefill, p["steps"].get<size_t>(), p["seconds"].get<double>() * 1e3,
                p["tokens_per_s"].get<double>(), p["s_mfu"].get<double>());
  }
  if (j.contains("serving")) {
    const json& s = j["serving"];
    auto pct = [&](const char* k) {
      const json& p = s[k];
      return absl::StrCat("p50 ", absl::StrFormat("%.1f", p["p50"].get<double>() * 1e3), "  p90 ",
                          absl::StrFormat("%.1f", p["p90"].get<double>() * 1e3), "  p99 ",
                          absl::StrFormat("%.1f", p["p99"].get<double>() * 1e3), " ms");
    };
    std::printf("\nserving: %d requests, %s, prompt %s, output %s tokens\n", a.requests,
                a.rate > 0 ? absl::StrCat("Poisson ", a.rate, " requests/s").c_str()
                           : absl::StrCat("concurrency ", s["concurrency"].get<int>()).c_str(),
                a.prompt_len.c_str(), a.output_len.c_str());
    std::printf("  output tokens/s   %.1f (%.1f per GPU), %lld steps of %.2f ms mean, %.1f tokens\n",
                s["output_tokens_per_s"].get<double>(), s["output_tokens_per_s_per_gpu"].get<double>(),
                static_cast<long long>(s["steps"].get<int64_t>()),
                s["mean_step_s"].get<double>() * 1e3, s["mean_tokens_per_step"].get<double>());
    if (s["mean_host_s"].get<double>() > 0) {
      std::printf("  front end         %.3f ms a step besides the step (per step %.1f us, per token %.1f us)\n",
                  s["mean_host_s"].get<double>() * 1e3, a.host_step_us, a.host_token_us);
    }
    if (a.host_cpu_step_us > 0 || a.host_cpu_token_us > 0) {
      std::printf("  front end's CPU   %.3f ms a step lost to it on rank 0's node (per step %.1f us, per token %.1f us)\n",
                  s["mean_front_end_cores_s"].get<double>() * 1e3, a.host_cpu_step_us,
                  a.host_cpu_token_us);
    }
    std::printf("  TTFT              %s\n", pct("ttft_s").c_str());
    std::printf("  ITL               %s\n", pct("itl_s").c_str());
    std::printf("  end to end        %s\n", pct("e2e_s").c_str());
    std::printf("  queue             %s\n", pct("queue_s").c_str());
    std::printf("  S-MBU %.3f  S-MFU %.3f\n", s["s_mbu"].get<double>(), s["s_mfu"].get<double>());
  }
  return code;
}

}  // namespace

struct PlotArgs {
  std::vector<std::string> in;
  std::string out;
  int batch = 0;
};

struct SweepArgs {
  std::string spec, out;
};

// Runs study/NAME.py (beside the source tree this binary was built from, or the folder
// $SWITCHYARD_STUDY_SCRIPTS) with Debian's Python: `study plot` and `study sweep`.
int RunScript(const std::string& name, std::vector<std::string> args) {
  std::string dir = SWITCHYARD_SOURCE_ROOT "/study";
  if (const char* env = std::getenv("SWITCHYARD_STUDY_SCRIPTS"); env != nullptr && *env) {
    dir = env;
  }
  const std::string script = dir + "/" + name + ".py";
  if (!std::filesystem::exists(script)) {
    return Fail(absl::NotFoundError(absl::StrCat("study ", name, ": its script ", script,
                                                 " is missing (set SWITCHYARD_STUDY_SCRIPTS)")));
  }
  args.insert(args.begin(), {"/usr/bin/python3", script});
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::cout.flush();
  execv(argv[0], argv.data());
  return Fail(absl::UnavailableError(absl::StrCat("study ", name, ": cannot run ", argv[0], ": ",
                                                  std::strerror(errno))));
}

int RunPlot(const PlotArgs& a) {
  std::vector<std::string> args = {"--out", a.out};
  if (a.batch > 0) args.insert(args.end(), {"--batch", std::to_string(a.batch)});
  args.insert(args.end(), a.in.begin(), a.in.end());
  return RunScript("plot", args);
}

int RunSweep(const SweepArgs& a) {
  // The sweep runs this very binary for every point.
  std::error_code ec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) return Fail(absl::InternalError("study sweep: cannot find its own binary"));
  return RunScript("sweep", {"--spec", a.spec, "--out", a.out, "--switchyard", self});
}

void RegisterStudy(CLI::App& app, Action* action) {
  CLI::App* study = app.add_subcommand("study", "Scaling studies (simulate, plot, sweep)");
  study->require_subcommand(1);
  {
    static PlotArgs p;
    CLI::App* plot = study->add_subcommand(
        "plot",
        "Draw a study (lines of `study simulate --append`) as PNG and SVG: throughput per GPU "
        "against nodes, ITL against throughput, the step's parts, the rank x rank traffic");
    plot->add_option("--in", p.in, "Study files (JSON lines of study simulate --json)")
        ->required()
        ->check(CLI::ExistingFile);
    plot->add_option("--out", p.out, "Folder for the pictures (created)")->required();
    plot->add_option("--batch", p.batch,
                     "Decode batch the per-configuration pictures use (default: each "
                     "configuration's largest)")
        ->check(CLI::Range(1, 1 << 20));
    plot->callback([action] { *action = [] { return RunPlot(p); }; });
  }
  {
    static SweepArgs w;
    CLI::App* sweep = study->add_subcommand(
        "sweep",
        "Measure a sweep on this machine or a hostfile's nodes (EP x PP, placements, decode "
        "batches, serving concurrency, lengths) through bench and loadgen: one JSON line per "
        "point with its environment; resumes where an interrupted sweep stopped");
    sweep->add_option("--spec", w.spec, "The sweep (JSON; docs/scaling.md)")
        ->required()
        ->check(CLI::ExistingFile);
    sweep->add_option("--out", w.out, "Results, one JSON line per point (appended)")->required();
    sweep->callback([action] { *action = [] { return RunSweep(w); }; });
  }
  static SimulateArgs a;
  CLI::App* cmd = study->add_subcommand(
      "simulate",
      "Project a configuration onto a described cluster: decode step time and its parts, "
      "prefill, memory fit, S-MBU/S-MFU, and (with --requests) serving through the real "
      "scheduler in virtual time");
  auto* model = cmd->add_option("--model", a.model, "A checkpoint folder (its config.json)")
                    ->check(CLI::ExistingDirectory);
  auto* preset = cmd->add_option("--preset", a.preset, "A model shape: mixtral-8x7b, mixtral-8x22b")
                     ->check(CLI::IsMember({"mixtral-8x7b", "mixtral-8x22b"}));
  model->excludes(preset);
  cmd->add_option("--layers", a.layers, "Decoder layers (default: the model's)")
      ->check(CLI::Range(1, 1024));
  auto* hw = cmd->add_option("--hardware", a.hardware, "A device preset: h100, h200")
                 ->check(CLI::IsMember({"h100", "h200"}));
  auto* cal = cmd->add_option("--calibration", a.calibration,
                              "A calibration file written by `switchyard preflight --out`")
                  ->check(CLI::ExistingFile);
  hw->excludes(cal);
  cmd->add_option("--nodes", a.nodes, "Nodes (checked against --ep x --pp)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--ranks-per-node", a.ranks_per_node,
                  "Ranks (GPUs) per node (default: 8 for a preset, the calibration's own)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--ep", a.ep, "Expert-parallel ranks per stage")->check(CLI::Range(1, 100000));
  cmd->add_option("--pp", a.pp, "Pipeline stages")->check(CLI::Range(1, 1024));
  cmd->add_option("--placement", a.placement, "A placement file (as serve takes)")
      ->check(CLI::ExistingFile);
  auto* skew = cmd->add_option("--skew", a.skew,
                               "Routing skew: expert e of layer l gets a share proportional to "
                               "(1 + (e + l) mod E)^-skew (0: uniform)")
                   ->check(CLI::Range(0.0, 20.0));
  cmd->add_option("--expert-load", a.expert_load,
                  "Measured routing (switchyard client status --json, or [[...], ...] per layer)")
      ->check(CLI::ExistingFile)
      ->excludes(skew);
  cmd->add_option("--batch", a.batches, "Decode batch sizes, comma-separated");
  cmd->add_option("--context", a.context, "Positions each decoding sequence has")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--prefill", a.prefill, "Also time prefilling one prompt of this many tokens")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--max-step-tokens", a.max_step_tokens,
                  "Tokens per step per data-parallel index (the prefill chunk bound too)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--requests", a.requests, "Simulate serving this many requests (0: no)")
      ->check(CLI::Range(0, 10000000));
  auto* conc = cmd->add_option("--concurrency", a.concurrency,
                               "Closed loop: clients each sending the next request when the "
                               "last ends (default 1)")
                   ->check(CLI::Range(1, 1000000));
  cmd->add_option("--host-step-us", a.host_step_us,
                  "Serving: the front end's cost per step on the job's cores (microseconds)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--host-token-us", a.host_token_us,
                  "Serving: the front end's cost per token delivered (microseconds)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--host-cpu-step-us", a.host_cpu_step_us,
                  "Serving: CPU time the front end's network threads and clients on rank 0's "
                  "node take per step beside the steps (microseconds)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--host-cpu-token-us", a.host_cpu_token_us,
                  "Serving: the same CPU time per token delivered (microseconds)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--turnaround-us", a.turnaround_us,
                  "Closed loop: a client's time from a request's end to its next request "
                  "reaching the scheduler (microseconds)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--rate", a.rate, "Open loop: Poisson arrivals per second")
      ->check(CLI::Range(1e-6, 1e9))
      ->excludes(conc);
  cmd->add_option("--prompt-len", a.prompt_len, "Prompt tokens: N or MIN:MAX (uniform)");
  cmd->add_option("--output-len", a.output_len, "Generated tokens: N or MIN:MAX (uniform)");
  cmd->add_option("--max-running", a.max_running, "Sequences decoding at once (as serve)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--kv-memory", a.kv_memory,
                  "KV cache per rank (default: what is left on a device of known capacity, "
                  "else 1GiB as serve)")
      ->check(ByteSizeCheck(false));
  cmd->add_option("--seed", a.seed, "Seed of arrivals and lengths");
  cmd->add_option("--launch-us", a.launch_us, "Fixed cost of one operation, microseconds")
      ->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--step-overhead-us", a.step_overhead_us,
                  "Fixed cost of one step on rank 0, microseconds")
      ->check(CLI::Range(0.0, 1e7));
  cmd->add_option("--out", a.out, "Also write the JSON here");
  cmd->add_option("--append", a.append,
                  "Also append the JSON as one line to this file (a study of several "
                  "configurations for `study plot`)");
  cmd->add_flag("--json", a.json, "Print JSON");
  cmd->add_flag("--require-fit", a.require_fit, "Exit 1 when the configuration does not fit");
  cmd->add_flag("--no-shared-memory", a.no_shared_memory,
                "Model CPU ranks of one node exchanging rows with the all-to-alls, as "
                "--no-shared-memory runs them (a CPU calibration otherwise models the shared "
                "memory they use by default)");
  cmd->callback([action, model, preset, hw, cal] {
    if (model->count() == 0 && preset->count() == 0) {
      throw CLI::ValidationError("--model or --preset", "one of them is required");
    }
    if (hw->count() == 0 && cal->count() == 0) {
      throw CLI::ValidationError("--hardware or --calibration", "one of them is required");
    }
    *action = [] { return RunSimulate(a); };
  });
}

}  // namespace switchyard::cli
