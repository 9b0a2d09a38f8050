// How many OpenMP threads each rank runs: chosen from the CPUs it may use, so that ranks
// sharing a node neither oversubscribe its cores (4 ranks x 2 threads on 2 cores serve 17x
// fewer tokens/s than 4 x 1, docs/benchmarks.md) nor leave them idle.
//
//   NodeThreads plan = ChooseThreads(getenv("OMP_NUM_THREADS"), node_ranks);
//   if (!plan.explicit_env) SetStepThreads(plan.threads[my_index_in_node_ranks]);
//
// A rank's share of the node is the sum, over the CPUs in its affinity mask, of 1 / (the
// number of ranks on the node whose masks hold that CPU). This one rule covers the cases a
// launcher produces: bound to disjoint cores (the share is the rank's own CPUs), not bound
// (every mask is the whole node: CPUs / ranks), bound to a socket shared with other ranks
// (the socket's CPUs / its ranks). An explicit OMP_NUM_THREADS always wins.
#pragma once

#include <string>
#include <vector>

namespace switchyard {

// One rank on a node: its world rank and the CPUs it may run on.
struct RankCpus {
  int world_rank = 0;
  std::vector<int> cpus;
};

struct NodeThreads {
  std::vector<int> threads;  // per entry of the node's ranks
  bool explicit_env = false; // OMP_NUM_THREADS was set: its value, for every rank
  int node_cpus = 0;         // CPUs in the union of the ranks' masks
  // Set when the ranks' threads add up to more than the node's CPUs (each rank still gets
  // at least one): what is oversubscribed and what to do about it.
  std::string oversubscribed;
  // One line for the log: ranks, CPUs, threads and why.
  std::string summary;
};

// `omp_env`: the OMP_NUM_THREADS value or null. `node`: the ranks on this node (any order).
NodeThreads ChooseThreads(const char* omp_env, const std::vector<RankCpus>& node);

// The CPUs this process may run on (sched_getaffinity), sorted.
std::vector<int> OwnCpus();

// The rank's chosen thread count for every thread that runs its steps. OpenMP keeps the
// count per thread: omp_set_num_threads on the main thread leaves a thread started later
// (the serving scheduler's, which runs rank 0's steps) at the node-wide default, all the
// node's CPUs, so rank 0 would run more threads than its share while its peers wait on it.
// SetStepThreads sets the calling thread's count and records it for the process (0 clears
// the record and leaves the thread's count alone); AdoptStepThreads gives the calling thread
// the recorded count (nothing when none was set, or where OMP_NUM_THREADS was set: OpenMP
// already starts every thread at it). Executors call it at the start of each step; it costs
// a comparison once adopted.
void SetStepThreads(int threads);
void AdoptStepThreads();
// The count SetStepThreads recorded, 0 if none.
int StepThreads();

}  // namespace switchyard
