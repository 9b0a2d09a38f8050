// Everything a command needs to run the model: config, checkpoint, tokenizer, this rank's
// weights, a step executor and a KV block pool, on one process or across an mpirun job.
//
//   ASSIGN_OR_RETURN(auto s, ModelSession::Open({.model_dir = "models/brown-moe",
//                                                .ep = 2, .pp = 2}));
//   if (!s->is_coordinator()) return s->RunWorker();   // ranks other than 0
//   SequenceRunner runner(s->executor.get(), s->allocator(0), s->config);
//   ...
//   RETURN_IF_ERROR(s->Shutdown());                     // rank 0: release the workers
//
// Under mpirun (world size > 1) rank 0 is the coordinator: it alone holds the tokenizer, the
// executor and the block allocators (one per data-parallel index); every rank, rank 0
// included, holds its shard and a DistributedWorker. With one process nothing touches MPI.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/block_allocator.h"
#include "coordinator/placement.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "worker/kv_cache.h"
#include "worker/step.h"

namespace switchyard {

class MpiCommunicator;
class Liveness;
class ProgressMeter;
class DistributedWorker;
class CudaWorker;
class DistributedExecutor;

struct SessionOptions {
  std::string model_dir;
  int max_step_tokens = 512;  // rows per step on one data-parallel rank
  int block_size = 16;
  // KV-cache blocks per data-parallel rank. 0: as many as kv_memory bytes hold on the rank
  // with the most layers (K and V as the chosen device stores them: fp32 on the CPU, bf16 on
  // the GPU), at least one full-context sequence and at most kv_max_sequences of them; with
  // kv_memory 0, exactly one full-context sequence. See KvPoolBlocks.
  int kv_blocks = 0;
  uint64_t kv_memory = 0;
  int kv_max_sequences = 1;
  bool show_progress = true;
  // Distribution (used when the process runs under mpirun with more than one rank).
  int ep = 1;
  int pp = 1;
  std::string placement_file;  // optional JSON placement (coordinator/placement.h)
  absl::Duration comm_timeout = absl::Seconds(60);
  // Expert dispatch among CPU ranks of one host through shared memory (CommOptions).
  bool shared_memory = true;
  // A rank silent this long on the liveness channel (comm/liveness.h) is declared failed;
  // also the floor of its progress check.
  absl::Duration liveness_timeout = absl::Seconds(5);
  // "cpu", "cuda", or "auto" (cuda when this build has CUDA and a GPU is present, else cpu).
  // A distributed GPU job runs one GPU per rank (the local rank's), or with share_gpu lets
  // the ranks of a node share its GPUs; "auto" refuses a node with more ranks than GPUs
  // unless share_gpu. Every rank must choose the same device.
  std::string device = "auto";
  std::string device_comm = "nccl";  // "nccl" or "staged" (worker/cuda_executor.h)
  bool share_gpu = false;
  // Runs on rank 0 before any rank loads weights (serve checks its address and TLS files
  // there); its error ends every rank at once. On the other ranks Open returns an error
  // marked ReportedByCoordinator, so only rank 0 prints it.
  std::function<absl::Status()> coordinator_check;
};

// True for the error a rank other than 0 gets when rank 0's coordinator_check failed (rank 0
// reports it; the others need not repeat it).
bool ReportedByCoordinator(const absl::Status& status);

struct ModelSession {
  ModelSession();
  ~ModelSession();

  ModelConfig config;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
  std::unique_ptr<Tokenizer> tokenizer;  // coordinator only; null without tokenizer.model
  std::unique_ptr<ModelWeights> weights;  // this rank's shard
  std::unique_ptr<StepExecutor> executor;  // coordinator only
  std::vector<std::unique_ptr<BlockAllocator>> allocators;  // coordinator: one per DP index
  PlacementPlan placement;
  int world_rank = 0;
  int world_size = 1;
  bool on_gpu = false;  // every rank computes on its GPU (SessionOptions::device)

  bool is_coordinator() const { return world_rank == 0; }
  BlockAllocator* allocator(int dp = 0) { return allocators[dp].get(); }
  int dp_size() const { return placement.ep; }
  DistributedWorker* worker() { return worker_; }
  DistributedExecutor* distributed_executor() { return distributed_; }
  // The job's liveness channel; null on one process.
  Liveness* liveness() { return liveness_.get(); }

  // Ranks other than 0: serve steps until the coordinator shuts the job down. On an error
  // rank 0 is told why first (it names this rank and the reason).
  absl::Status RunWorker();
  // Coordinator: say goodbye on the liveness channel, then tell every other rank to leave
  // RunWorker. No-op on one process.
  absl::Status Shutdown();

  // Errors name the file at fault (config.json, a safetensors file and tensor, the
  // tokenizer), or the flags (--ep/--pp against the world size, a placement file).
  static absl::StatusOr<std::unique_ptr<ModelSession>> Open(const SessionOptions& options);

 private:
  // Open's executor construction, once config, placement and weights are loaded: the CUDA or
  // CPU executor of a single process, or this rank's DistributedWorker (and on rank 0 the
  // DistributedExecutor) with its communicators, over a KV pool of `kv_blocks` blocks.
  // Returns the seconds spent waiting for other ranks.
  absl::StatusOr<double> BuildExecutor(const SessionOptions& options, const ShardSpec& spec,
                                       bool use_cuda, int kv_blocks);

  // The steps of Open after the liveness channel is up: config, placement, checkpoint,
  // tokenizer, weights, KV pool and executor.
  static absl::Status Load(ModelSession* s, const SessionOptions& options, bool use_cuda);

  std::unique_ptr<ProgressMeter> progress_;  // before liveness_: it reads the meter
  std::unique_ptr<Liveness> liveness_;
  std::unique_ptr<MpiCommunicator> world_comm_;
  std::unique_ptr<MpiCommunicator> ep_comm_;
  // This rank's worker: the CPU one, or the one inside the CUDA worker (device
  // communicators, backend), which goes before the MPI groups it uses.
  std::unique_ptr<DistributedWorker> owned_worker_;
  std::unique_ptr<CudaWorker> cuda_worker_;
  DistributedWorker* worker_ = nullptr;
  DistributedExecutor* distributed_ = nullptr;
};

// KV-cache blocks per data-parallel rank for `options` (the rule of SessionOptions::kv_blocks),
// for a cache whose elements are `dtype`: the same kv_memory holds twice the blocks in bf16
// (the CUDA executor) as in fp32 (the CPU executors). Every rank gets the same count.
// Errors: kInvalidArgument for a block size below 1 or more than 2^30 blocks.
absl::StatusOr<int> KvPoolBlocks(const SessionOptions& options, const ModelConfig& config,
                                 const PlacementPlan& placement, KvDType dtype);

// Sets this rank's OpenMP threads from the CPUs the ranks on its node may use (see
// common/cpu_threads.h); the lowest rank of each node logs what it chose. Collective over
// `world` (null in a single-process job). OMP_NUM_THREADS, when set, wins.
absl::Status ConfigureThreads(MpiCommunicator* world);

// A Slurm step of several tasks in which MPI was not wired up (srun without --mpi=pmix, or a
// Slurm without PMIx): every task sees a world of one, and would go on alone. Given this
// process's world size, kFailedPrecondition saying what is wrong and how to launch, else OK.
absl::Status CheckSlurmWireUp(int world_size);

// True when this process was started by mpirun/srun (Open MPI, PMI or PMIx variables set).
bool LaunchedUnderMpi();

}  // namespace switchyard
