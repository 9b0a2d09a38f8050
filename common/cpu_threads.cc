#include "common/cpu_threads.h"

#include <sched.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace switchyard {
namespace {

// "0-3,6": ranges of consecutive values.
std::string Ranges(const std::vector<int>& sorted) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(sorted[i]) : absl::StrCat(sorted[i], "-", sorted[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

}  // namespace

NodeThreads ChooseThreads(const char* omp_env, const std::vector<RankCpus>& node) {
  NodeThreads out;
  std::map<int, int> sharers;  // CPU -> ranks whose mask holds it
  for (const RankCpus& r : node) {
    for (int c : std::set<int>(r.cpus.begin(), r.cpus.end())) ++sharers[c];
  }
  out.node_cpus = static_cast<int>(sharers.size());
  int env_threads = 0;
  if (omp_env != nullptr) {
    char* end = nullptr;
    const long v = std::strtol(omp_env, &end, 10);
    if (end != omp_env && v >= 1 && v <= 4096) env_threads = static_cast<int>(v);
  }
  out.explicit_env = env_threads > 0;
  bool shared = false;
  for (const RankCpus& r : node) {
    double share = 0;
    for (int c : std::set<int>(r.cpus.begin(), r.cpus.end())) {
      share += 1.0 / sharers[c];
      shared |= sharers[c] > 1;
    }
    const int chosen = std::max(1, static_cast<int>(std::floor(share + 1e-9)));
    out.threads.push_back(out.explicit_env ? env_threads : chosen);
  }
  int total = 0;
  for (int t : out.threads) total += t;

  std::vector<int> ranks;
  for (const RankCpus& r : node) ranks.push_back(r.world_rank);
  std::sort(ranks.begin(), ranks.end());
  const std::string who = node.size() == 1 ? absl::StrCat("rank ", ranks[0])
                                           : absl::StrCat(node.size(), " ranks (", Ranges(ranks), ")");
  std::set<int> distinct(out.threads.begin(), out.threads.end());
  std::string each;
  if (distinct.size() == 1) {
    each = absl::StrCat(*distinct.begin(), *distinct.begin() == 1 ? " thread" : " threads",
                        node.size() == 1 ? "" : " each");
  } else {
    std::vector<std::string> per;
    for (size_t i = 0; i < node.size(); ++i) {
      per.push_back(absl::StrCat("rank ", node[i].world_rank, ": ", out.threads[i]));
    }
    each = absl::StrCat("threads ", absl::StrJoin(per, ", "));
  }
  std::string why;
  if (out.explicit_env) {
    why = absl::StrCat("as OMP_NUM_THREADS=", env_threads, " says");
  } else if (node.size() == 1) {
    why = "from the CPUs this process may use; OMP_NUM_THREADS overrides";
  } else if (!shared) {
    why = "from each rank's own CPUs (the launcher bound the ranks); OMP_NUM_THREADS overrides";
  } else {
    why = "from the CPUs the ranks share on this node; OMP_NUM_THREADS overrides";
  }
  std::vector<int> all_cpus;
  for (const auto& [cpu, n] : sharers) all_cpus.push_back(cpu);
  out.summary = absl::StrCat(who, " on ", out.node_cpus, out.node_cpus == 1 ? " CPU" : " CPUs",
                             " (", Ranges(all_cpus), "): ", each, ", ", why);
  if (total > out.node_cpus) {
    out.oversubscribed = absl::StrCat(
        who, " run ", total, " threads on ", out.node_cpus,
        out.node_cpus == 1 ? " CPU" : " CPUs",
        ": the cores are oversubscribed and steps will be slower (",
        out.explicit_env ? "lower OMP_NUM_THREADS, or " : "",
        "start fewer ranks per node)");
  }
  return out;
}

std::vector<int> OwnCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

namespace {
std::atomic<int> step_threads{0};
}  // namespace

void SetStepThreads(int threads) {
  step_threads.store(std::max(threads, 0), std::memory_order_relaxed);
  if (threads > 0) omp_set_num_threads(threads);
}

void AdoptStepThreads() {
  const int threads = step_threads.load(std::memory_order_relaxed);
  if (threads > 0 && omp_get_max_threads() != threads) omp_set_num_threads(threads);
}

int StepThreads() { return step_threads.load(std::memory_order_relaxed); }

}  // namespace switchyard
