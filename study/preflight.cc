#include "study/preflight.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/bf16.h"
#include "common/host_port.h"
#include "common/memory_bandwidth.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kTag = 900;  // preflight's point-to-point messages
constexpr size_t kHostBytes = 64;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The figures of one link class: every ordered pair's bandwidth, every pair's latency once.
struct ClassFigures {
  std::vector<double> bandwidth, latency;
};
ClassFigures CollectClass(const PreflightReport& rep, LinkClass cls) {
  ClassFigures c;
  for (int s = 0; s < rep.world; ++s) {
    for (int d = 0; d < rep.world; ++d) {
      if (rep.ClassOf(s, d) != cls) continue;
      c.bandwidth.push_back(rep.bandwidth_bytes_per_s[s][d]);
      if (s < d) c.latency.push_back(rep.latency_s[s][d]);
    }
  }
  return c;
}

std::string Gbps(double bytes_per_s) { return absl::StrFormat("%.2f GB/s", bytes_per_s / 1e9); }
std::string Micros(double s) { return absl::StrFormat("%.1f us", s * 1e6); }

// One pair's latency (measured by the lower rank) and both directions' bandwidth (each
// measured by its sender).
absl::Status MeasurePair(Communicator& c, int peer, const PreflightOptions& o,
                         std::vector<char>& buf, std::vector<char>& back, double* latency,
                         double* bandwidth) {
  const bool low = c.rank() < peer;
  char token[8] = {};
  std::vector<char> small(std::max<size_t>(o.small_bytes, 1));
  // Both sides time round trips: the low rank from its send to the answer, the high one from
  // its answer to the next message. The report keeps the low rank's; each side subtracts its
  // own from the bandwidth streams below.
  std::vector<double> rtt;
  Clock::time_point answered;
  for (int i = 0; i < o.latency_iters + 3; ++i) {
    if (low) {
      const auto t0 = Clock::now();
      RETURN_IF_ERROR(c.Send(small.data(), small.size(), peer, kTag));
      RETURN_IF_ERROR(c.Recv(small.data(), small.size(), peer, kTag));
      if (i >= 3) rtt.push_back(Since(t0));
    } else {
      RETURN_IF_ERROR(c.Recv(small.data(), small.size(), peer, kTag));
      if (i >= 4) rtt.push_back(Since(answered));
      RETURN_IF_ERROR(c.Send(small.data(), small.size(), peer, kTag));
      answered = Clock::now();
    }
  }
  const double one_way = Median(rtt) / 2;
  if (low) *latency = one_way;
  // Low sends first, then high. One untimed message and its acknowledgement first, then
  // kStreams timed streams of bandwidth_iters messages, the best kept (a stream that lost the
  // CPU to another process says little about the link).
  constexpr int kStreams = 3;
  for (int dir = 0; dir < 2; ++dir) {
    const bool sending = (dir == 0) == low;
    for (int phase = 0; phase <= kStreams; ++phase) {
      const int n = phase == 0 ? 1 : o.bandwidth_iters;
      if (sending) {
        const auto t0 = Clock::now();
        for (int i = 0; i < n; ++i) RETURN_IF_ERROR(c.Send(buf.data(), buf.size(), peer, kTag));
        RETURN_IF_ERROR(c.Recv(token, sizeof(token), peer, kTag));
        if (phase > 0) {
          // The acknowledgement's own trip is not bandwidth.
          const double t = std::max(Since(t0) - one_way, 1e-9);
          *bandwidth = std::max(*bandwidth, static_cast<double>(n) * static_cast<double>(buf.size()) / t);
        }
      } else {
        for (int i = 0; i < n; ++i) RETURN_IF_ERROR(c.Recv(back.data(), back.size(), peer, kTag));
        RETURN_IF_ERROR(c.Send(token, sizeof(token), peer, kTag));
      }
    }
  }
  return absl::OkStatus();
}

// Best rate of `reps` runs of `f` (after one untimed), in units of `work` per second.
template <typename F>
double BestRate(int reps, double work, F f) {
  f();
  double best = 0;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::max(best, work / std::max(Since(t0), 1e-9));
  }
  return best;
}

void MeasureRank(const PreflightOptions& o, RankFigures* me) {
  me->copy_bytes_per_s = MeasureCopyBandwidth(o.copy_bytes, 3);
  const int N = o.matmul_n, K = o.matmul_k, T = o.prefill_rows;
  std::vector<uint16_t> w(static_cast<size_t>(N) * K);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
  for (uint16_t& v : w) v = FloatToBf16(dist(rng));
  const WeightMatrix W{DType::kBF16, w.data(), N, K};
  std::vector<float> x(static_cast<size_t>(T) * K, 0.01f), y(static_cast<size_t>(T) * N);
  me->decode_weight_bytes_per_s =
      BestRate(5, static_cast<double>(W.bytes()), [&] { cpu::MatMul(x.data(), 1, W, y.data()); });
  me->prefill_flops = BestRate(3, 2.0 * T * N * static_cast<double>(K),
                               [&] { cpu::MatMul(x.data(), T, W, y.data()); });
}

}  // namespace

const char* LinkClassName(LinkClass c) {
  switch (c) {
    case LinkClass::kSelf:
      return "self";
    case LinkClass::kWithinNode:
      return "within_node";
    case LinkClass::kBetweenNodes:
      return "between_nodes";
  }
  return "?";
}

LinkClass PreflightReport::ClassOf(int src, int dst) const {
  if (src == dst) return LinkClass::kSelf;
  return ranks[src].host == ranks[dst].host ? LinkClass::kWithinNode : LinkClass::kBetweenNodes;
}

int RoundCount(int n) { return n <= 1 ? 0 : n + n % 2 - 1; }

int PartnerInRound(int rank, int round, int n) {
  const int padded = n + n % 2, m = padded - 1;  // rank padded-1 stays put, the others rotate
  int partner;
  if (rank == padded - 1) {
    partner = round;
  } else if (rank == round) {
    partner = padded - 1;
  } else {
    partner = ((2 * round - rank) % m + m) % m;
  }
  return partner >= n ? -1 : partner;
}

absl::StatusOr<PreflightReport> RunPreflight(
    Communicator& world, const PreflightOptions& o,
    const std::function<void(int round, int rounds)>& progress) {
  if (o.latency_iters < 1 || o.bandwidth_iters < 1 || o.large_bytes < 1 || o.copy_bytes < 1 ||
      o.matmul_k < 1 || o.matmul_n < 1 || o.prefill_rows < 1 || !(o.outlier_factor > 1)) {
    return absl::InvalidArgumentError(
        "preflight: iterations, sizes and matrix shapes must be positive and the outlier "
        "factor above 1");
  }
  const auto start = Clock::now();
  const int n = world.size(), me = world.rank();
  std::vector<double> latency(n, 0), bandwidth(n, 0);
  std::vector<char> buf(o.large_bytes, 1), back(o.large_bytes);
  const int rounds = RoundCount(n);
  for (int r = 0; r < rounds; ++r) {
    if (me == 0 && progress) progress(r, rounds);
    RETURN_IF_ERROR(world.Barrier());
    const int peer = PartnerInRound(me, r, n);
    if (peer < 0) continue;
    RETURN_IF_ERROR(MeasurePair(world, peer, o, buf, back, &latency[peer], &bandwidth[peer]));
  }
  std::vector<char>().swap(buf);  // the bandwidth buffers go before the copy's
  std::vector<char>().swap(back);
  RETURN_IF_ERROR(world.Barrier());
  RankFigures mine{.host = HostName()};
  MeasureRank(o, &mine);
  RETURN_IF_ERROR(world.Barrier());
  if (o.operations_model != nullptr) {
    auto ops = MeasureOperations(*o.operations_model, o.operations);
    if (!ops.ok()) {
      return absl::Status(ops.status().code(),
                          absl::StrCat("rank ", me, ": ", ops.status().message()));
    }
    mine.operations = *std::move(ops);
    RETURN_IF_ERROR(world.Barrier());
  }

  // Rank 0 collects every rank's row and figures.
  const size_t width = 3 + 2 * static_cast<size_t>(n);
  std::vector<double> row(width), rows(me == 0 ? width * n : 0);
  row[0] = mine.copy_bytes_per_s;
  row[1] = mine.decode_weight_bytes_per_s;
  row[2] = mine.prefill_flops;
  std::copy(latency.begin(), latency.end(), row.begin() + 3);
  std::copy(bandwidth.begin(), bandwidth.end(), row.begin() + 3 + n);
  char host[kHostBytes] = {};
  std::snprintf(host, sizeof(host), "%s", mine.host.c_str());
  std::vector<char> hosts(me == 0 ? kHostBytes * n : 0);
  RETURN_IF_ERROR(world.Gather(row.data(), width * sizeof(double), rows.data(), 0));
  RETURN_IF_ERROR(world.Gather(host, kHostBytes, hosts.data(), 0));
  // Operation costs travel as JSON text: each rank its length, then the text.
  std::vector<std::string> ops_text(me == 0 ? n : 0);
  if (o.operations_model != nullptr) {
    const std::string text = OperationCostsJson(*mine.operations).dump();
    const uint64_t len = text.size();
    std::vector<uint64_t> lens(me == 0 ? n : 0);
    RETURN_IF_ERROR(world.Gather(&len, sizeof(len), lens.data(), 0));
    if (me != 0) {
      RETURN_IF_ERROR(world.Send(text.data(), text.size(), 0, kTag + 1));
    } else {
      ops_text[0] = text;
      for (int r = 1; r < n; ++r) {
        ops_text[r].resize(lens[r]);
        RETURN_IF_ERROR(world.Recv(ops_text[r].data(), lens[r], r, kTag + 1));
      }
    }
  }

  PreflightReport report;
  report.transport = "mpi";
  report.device = "cpu";
  report.world = n;
  report.options = o;
  if (me != 0) {
    report.ranks = {mine};
    return report;
  }
  report.ranks.resize(n);
  report.latency_s.assign(n, std::vector<double>(n, 0));
  report.bandwidth_bytes_per_s.assign(n, std::vector<double>(n, 0));
  for (int r = 0; r < n; ++r) {
    const double* x = &rows[width * r];
    report.ranks[r] = {.host = std::string(&hosts[kHostBytes * r],
                                           strnlen(&hosts[kHostBytes * r], kHostBytes)),
                       .copy_bytes_per_s = x[0],
                       .decode_weight_bytes_per_s = x[1],
                       .prefill_flops = x[2]};
    if (o.operations_model != nullptr) {
      const nlohmann::json j = nlohmann::json::parse(ops_text[r], nullptr, false);
      ASSIGN_OR_RETURN(report.ranks[r].operations,
                       ParseOperationCosts(j, absl::StrCat("rank ", r, " operations")));
    }
    for (int p = 0; p < n; ++p) {
      report.bandwidth_bytes_per_s[r][p] = x[3 + n + p];
      if (r < p) report.latency_s[r][p] = report.latency_s[p][r] = x[3 + p];
    }
  }
  report.seconds = Since(start);
  report.findings = FindOutliers(report);
  return report;
}

std::vector<PreflightFinding> FindOutliers(const PreflightReport& rep) {
  std::vector<PreflightFinding> out;
  const int n = rep.world;
  const double f = rep.options.outlier_factor;
  constexpr size_t kMinSamples = 3;  // a median of fewer says nothing about one of them
  for (LinkClass cls : {LinkClass::kWithinNode, LinkClass::kBetweenNodes}) {
    const ClassFigures figures = CollectClass(rep, cls);
    const std::vector<double>& bw = figures.bandwidth;
    const std::vector<double>& lat = figures.latency;
    const std::string where = cls == LinkClass::kWithinNode ? "within a node" : "between nodes";
    // The slow pairs first, then each rank's share of them: a rank with slow links to most
    // of the partners in them is the one to look at. Links are counted once whichever
    // direction (or latency) was slow, so one bad cable, slow both ways, blames no NIC.
    std::vector<PreflightFinding> slow;
    std::map<int, std::set<int>> partners;  // rank -> the ranks it has a slow link with
    std::set<std::pair<int, int>> links;     // the slow links, (low, high)
    auto note = [&](int a, int b) {
      partners[a].insert(b);
      partners[b].insert(a);
      links.insert({std::min(a, b), std::max(a, b)});
    };
    const double bw_median = Median(bw), lat_median = Median(lat);
    for (int s = 0; bw.size() >= kMinSamples && s < n; ++s) {
      for (int d = 0; d < n; ++d) {
        if (rep.ClassOf(s, d) != cls) continue;
        const double v = rep.bandwidth_bytes_per_s[s][d];
        if (v * f >= bw_median) continue;
        slow.push_back({.kind = "bandwidth", .src = s, .dst = d});
        slow.back().message = absl::StrFormat(
            "rank %d -> rank %d: %s, %.1fx below the median of its link class (%s, %s)", s, d,
            Gbps(v), bw_median / std::max(v, 1e-12), where, Gbps(bw_median));
        note(s, d);
      }
    }
    for (int s = 0; lat.size() >= kMinSamples && s < n; ++s) {
      for (int d = s + 1; d < n; ++d) {
        if (rep.ClassOf(s, d) != cls) continue;
        const double v = rep.latency_s[s][d];
        if (v <= lat_median * f) continue;
        slow.push_back({.kind = "latency", .src = s, .dst = d});
        slow.back().message = absl::StrFormat(
            "rank %d <-> rank %d: latency %s, %.1fx above the median of its link class (%s, %s)",
            s, d, Micros(v), v / std::max(lat_median, 1e-12), where, Micros(lat_median));
        note(s, d);
      }
    }
    const int n_links = static_cast<int>(links.size());
    for (PreflightFinding& finding : slow) {
      // The endpoint on more of the slow links: at least two, at least half of them, and more
      // than the other endpoint.
      const int ks = static_cast<int>(partners[finding.src].size());
      const int kd = static_cast<int>(partners[finding.dst].size());
      const int blame = ks == kd ? -1 : (ks > kd ? finding.src : finding.dst);
      const int k = std::max(ks, kd);
      const bool named = blame >= 0 && k >= 2 && 2 * k >= n_links;
      if (named && cls == LinkClass::kBetweenNodes) {
        absl::StrAppend(&finding.message, "; check the NIC of ", rep.ranks[blame].host,
                        " (rank ", blame, " is on ", k, " of the ", n_links, " slow links)");
      } else if (named) {
        absl::StrAppend(&finding.message, "; check rank ", blame, " on ",
                        rep.ranks[blame].host, ": its CPU binding and what else runs there (on ",
                        k, " of the ", n_links, " slow links)");
      } else if (cls == LinkClass::kBetweenNodes) {
        absl::StrAppend(&finding.message, "; check the link between ",
                        rep.ranks[finding.src].host, " and ", rep.ranks[finding.dst].host);
      } else {
        absl::StrAppend(&finding.message, "; check the binding of both ranks on ",
                        rep.ranks[finding.src].host);
      }
      out.push_back(std::move(finding));
    }
  }
  if (static_cast<size_t>(n) >= kMinSamples) {
    struct Figure {
      const char* kind;
      const char* what;
      double RankFigures::*field;
      bool flops;
    };
    for (const Figure& fig :
         {Figure{"copy", "memory copy", &RankFigures::copy_bytes_per_s, false},
          Figure{"matmul", "decode multiply", &RankFigures::decode_weight_bytes_per_s, false},
          Figure{"matmul", "prefill multiply", &RankFigures::prefill_flops, true}}) {
      std::vector<double> v;
      for (const RankFigures& r : rep.ranks) v.push_back(r.*fig.field);
      const double med = Median(v);
      for (int r = 0; r < n; ++r) {
        const double x = rep.ranks[r].*fig.field;
        if (x * f >= med) continue;
        auto rate = [&](double y) {
          return fig.flops ? absl::StrFormat("%.1f GFLOP/s", y / 1e9) : Gbps(y);
        };
        out.push_back({.kind = fig.kind, .src = r, .dst = -1,
                       .message = absl::StrFormat(
                           "rank %d on %s: %s %s, %.1fx below the median of the job's ranks "
                           "(%s); check its CPU binding and what else runs on %s",
                           r, rep.ranks[r].host, fig.what, rate(x), med / std::max(x, 1e-12),
                           rate(med), rep.ranks[r].host)});
      }
    }
  }
  return out;
}

namespace {

// Medians per link class: {class: {pairs, latency_s, bandwidth_bytes_per_s}}.
nlohmann::json LinkMedians(const PreflightReport& rep) {
  nlohmann::json links = nlohmann::json::object();
  for (LinkClass cls : {LinkClass::kWithinNode, LinkClass::kBetweenNodes}) {
    const ClassFigures c = CollectClass(rep, cls);
    if (c.bandwidth.empty()) continue;
    links[LinkClassName(cls)] = {{"ordered_pairs", c.bandwidth.size()},
                                 {"latency_s", Median(c.latency)},
                                 {"bandwidth_bytes_per_s", Median(c.bandwidth)}};
  }
  return links;
}

}  // namespace

std::string FormatReport(const PreflightReport& rep) {
  const int n = rep.world;
  std::vector<std::string> hosts;
  for (const RankFigures& r : rep.ranks) {
    if (std::find(hosts.begin(), hosts.end(), r.host) == hosts.end()) hosts.push_back(r.host);
  }
  std::string out = absl::StrFormat("preflight: %d rank(s) on %d host(s), %s transport, %s, %.1f s\n",
                                    n, hosts.size(), rep.transport, rep.device, rep.seconds);
  constexpr int kMaxMatrix = 32;
  if (n > 1 && n <= kMaxMatrix) {
    auto matrix = [&](const char* title, const std::vector<std::vector<double>>& m,
                      double scale, int digits) {
      absl::StrAppend(&out, title, "\n      ");
      for (int d = 0; d < n; ++d) absl::StrAppend(&out, absl::StrFormat("%8d", d));
      absl::StrAppend(&out, "\n");
      for (int s = 0; s < n; ++s) {
        absl::StrAppend(&out, absl::StrFormat("%6d", s));
        for (int d = 0; d < n; ++d) {
          absl::StrAppend(&out, s == d ? absl::StrFormat("%8s", "-")
                                       : absl::StrFormat("%8.*f", digits, m[s][d] * scale));
        }
        absl::StrAppend(&out, "\n");
      }
    };
    matrix("bandwidth, GB/s (row: from rank, column: to rank)", rep.bandwidth_bytes_per_s, 1e-9,
           2);
    matrix("latency, us (one way)", rep.latency_s, 1e6, 1);
  } else if (n > kMaxMatrix) {
    absl::StrAppend(&out, "(the ", n, " x ", n, " matrices are in the calibration file)\n");
  }
  const nlohmann::json links = LinkMedians(rep);
  for (const auto& [cls, v] : links.items()) {
    absl::StrAppend(&out, absl::StrFormat("link class %s: %d ordered pairs, median %s, %s\n",
                                          cls, v["ordered_pairs"].get<int>(),
                                          Gbps(v["bandwidth_bytes_per_s"].get<double>()),
                                          Micros(v["latency_s"].get<double>())));
  }
  absl::StrAppend(&out, absl::StrFormat("%6s  %-20s %12s %18s %16s\n", "rank", "host", "copy GB/s",
                                        "decode weights GB/s", "prefill GFLOP/s"));
  for (int r = 0; r < n; ++r) {
    const RankFigures& f = rep.ranks[r];
    absl::StrAppend(&out, absl::StrFormat("%6d  %-20s %12.2f %18.2f %16.1f\n", r, f.host,
                                          f.copy_bytes_per_s / 1e9,
                                          f.decode_weight_bytes_per_s / 1e9,
                                          f.prefill_flops / 1e9));
  }
  if (rep.findings.empty()) {
    absl::StrAppend(&out, absl::StrFormat("findings: none (no figure %.1fx off its class's median)\n",
                                          rep.options.outlier_factor));
  } else {
    absl::StrAppend(&out, "findings:\n");
    for (const PreflightFinding& f : rep.findings) absl::StrAppend(&out, "  ", f.message, "\n");
  }
  return out;
}

nlohmann::json CalibrationJson(const PreflightReport& rep) {
  nlohmann::json ranks = nlohmann::json::array(), hosts = nlohmann::json::array();
  for (int r = 0; r < rep.world; ++r) {
    const RankFigures& f = rep.ranks[r];
    ranks.push_back({{"rank", r},
                     {"host", f.host},
                     {"copy_bytes_per_s", f.copy_bytes_per_s},
                     {"decode_weight_bytes_per_s", f.decode_weight_bytes_per_s},
                     {"prefill_flops", f.prefill_flops}});
    if (f.operations) ranks.back()["operations"] = OperationCostsJson(*f.operations);
    hosts.push_back(f.host);
  }
  nlohmann::json findings = nlohmann::json::array();
  for (const PreflightFinding& f : rep.findings) {
    findings.push_back({{"kind", f.kind}, {"src", f.src}, {"dst", f.dst}, {"message", f.message}});
  }
  const PreflightOptions& o = rep.options;
  return {{"kind", "switchyard-calibration"},
          {"version", 1},
          {"transport", rep.transport},
          {"device", rep.device},
          {"world", rep.world},
          {"hosts", hosts},
          {"links", LinkMedians(rep)},
          {"ranks", ranks},
          {"matrix", {{"latency_s", rep.latency_s}, {"bandwidth_bytes_per_s", rep.bandwidth_bytes_per_s}}},
          {"findings", findings},
          {"seconds", rep.seconds},
          {"options",
           {{"small_bytes", o.small_bytes},
            {"latency_iters", o.latency_iters},
            {"large_bytes", o.large_bytes},
            {"bandwidth_iters", o.bandwidth_iters},
            {"copy_bytes", o.copy_bytes},
            {"matmul_k", o.matmul_k},
            {"matmul_n", o.matmul_n},
            {"prefill_rows", o.prefill_rows},
            {"outlier_factor", o.outlier_factor}}}};
}

absl::StatusOr<PreflightReport> ParseCalibration(const nlohmann::json& j) {
  auto bad = [](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("calibration: ", field, ": ", why));
  };
  if (!j.is_object()) return bad("(top level)", "not a JSON object");
  if (!j.contains("kind") || !j["kind"].is_string() ||
      j["kind"].get<std::string>() != "switchyard-calibration") {
    return bad("kind", "not \"switchyard-calibration\"");
  }
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"] != 1) {
    return bad("version", "only version 1 is understood");
  }
  PreflightReport rep;
  if (!j.contains("world") || !j["world"].is_number_integer() || j["world"].get<int>() < 1) {
    return bad("world", "must be a positive integer");
  }
  rep.world = j["world"].get<int>();
  for (const char* name : {"transport", "device"}) {
    if (j.contains(name) && !j[name].is_string()) return bad(name, "must be a string");
  }
  if (j.contains("seconds") && !j["seconds"].is_number()) return bad("seconds", "must be a number");
  rep.transport = j.value("transport", "");
  rep.device = j.value("device", "");
  rep.seconds = j.value("seconds", 0.0);
  const int n = rep.world;
  if (!j.contains("ranks") || !j["ranks"].is_array() || static_cast<int>(j["ranks"].size()) != n) {
    return bad("ranks", absl::StrCat("must list ", n, " ranks"));
  }
  for (int r = 0; r < n; ++r) {
    const nlohmann::json& x = j["ranks"][r];
    RankFigures f;
    const std::string at = absl::StrCat("ranks[", r, "]");
    if (!x.is_object() || !x.contains("host") || !x["host"].is_string()) {
      return bad(at + ".host", "missing");
    }
    f.host = x["host"].get<std::string>();
    for (auto [name, field] : {std::pair{"copy_bytes_per_s", &RankFigures::copy_bytes_per_s},
                               {"decode_weight_bytes_per_s", &RankFigures::decode_weight_bytes_per_s},
                               {"prefill_flops", &RankFigures::prefill_flops}}) {
      if (!x.contains(name) || !x[name].is_number() || x[name].get<double>() < 0) {
        return bad(absl::StrCat(at, ".", name), "must be a non-negative number");
      }
      f.*field = x[name].get<double>();
    }
    if (x.contains("operations")) {
      ASSIGN_OR_RETURN(f.operations,
                       ParseOperationCosts(x["operations"], "calibration: " + at + ".operations"));
    }
    rep.ranks.push_back(std::move(f));
  }
  for (auto [name, m] : {std::pair{"latency_s", &rep.latency_s},
                         {"bandwidth_bytes_per_s", &rep.bandwidth_bytes_per_s}}) {
    const std::string at = absl::StrCat("matrix.", name);
    if (!j.contains("matrix") || !j["matrix"].contains(name) || !j["matrix"][name].is_array() ||
        static_cast<int>(j["matrix"][name].size()) != n) {
      return bad(at, absl::StrCat("must be ", n, " x ", n));
    }
    for (const nlohmann::json& row : j["matrix"][name]) {
      if (!row.is_array() || static_cast<int>(row.size()) != n) {
        return bad(at, absl::StrCat("must be ", n, " x ", n));
      }
      std::vector<double> v;
      for (const nlohmann::json& x : row) {
        if (!x.is_number() || x.get<double>() < 0) return bad(at, "entries must be non-negative numbers");
        v.push_back(x.get<double>());
      }
      m->push_back(std::move(v));
    }
  }
  if (j.contains("options")) {
    const nlohmann::json& o = j["options"];
    if (!o.is_object()) return bad("options", "must be an object");
    if (o.contains("outlier_factor")) {
      if (!o["outlier_factor"].is_number() || !(o["outlier_factor"].get<double>() > 1)) {
        return bad("options.outlier_factor", "must be a number above 1");
      }
      rep.options.outlier_factor = o["outlier_factor"].get<double>();
    }
  }
  rep.findings = FindOutliers(rep);
  return rep;
}

}  // namespace switchyard
