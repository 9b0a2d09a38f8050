#include "coordinator/model_session.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/liveness.h"
#include "comm/mpi_communicator.h"
#include "common/cpu_threads.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "worker/cuda_executor.h"
#include "worker/distributed_executor.h"
#include "worker/local_executor.h"

namespace switchyard {

ModelSession::ModelSession() = default;
ModelSession::~ModelSession() = default;

bool LaunchedUnderMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

namespace {

// One line per rank on stderr: what it holds and how much memory that takes.
void LogShard(const ModelSession& s, const ShardSpec& spec, uint64_t kv_bytes) {
  std::string experts;
  if (!spec.local_experts.empty()) experts = absl::StrJoin(spec.local_experts.front(), ",");
  spdlog::info("stage {}, ep rank {}: layers [{}, {}), experts {{{}}}{}{}: weights {}, KV cache {}",
               s.world_rank / s.placement.ep, s.world_rank % s.placement.ep,
               spec.layer_begin, spec.layer_end, experts,
               spec.has_embedding ? ", embedding" : "", spec.has_head ? ", head" : "",
               ByteProgress::FormatBytes(s.weights->resident_bytes()),
               ByteProgress::FormatBytes(kv_bytes));
}

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

constexpr char kReportedByCoordinator[] = "switchyard/reported-by-rank-0";

// Device choice (SessionOptions::device) on this rank: the GPU it runs on ("" for the CPU).
// Validates the flags, probes for a GPU once and, in a distributed job, makes the local rank's
// GPU current; refuses a --device cuda the rank cannot honour (no usable device).
absl::StatusOr<std::string> ChooseGpuHere(const SessionOptions& o, int world_size) {
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError("--device must be auto, cpu or cuda, got " + o.device);
  }
  const bool gpu = o.device != "cpu" && CudaDeviceAvailable();
  if (o.device == "cuda" && !gpu) {
    return absl::FailedPreconditionError(
        "--device cuda: no usable CUDA device (or this build has no CUDA backend)");
  }
  if (!gpu) return std::string();
  if (world_size == 1) return std::string("the current GPU");
  if (absl::Status st = CheckDeviceComm(o.device_comm); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("--device ", o.device, ": ", st.message(),
                                                o.device == "auto" ? "; or pass --device cpu" : ""));
  }
  return SelectRankGpu();
}

// Every rank chooses, and rank 0 makes sure the job is consistent: one device kind for every
// rank, and (unless --share-gpu) no two ranks of a host on the same GPU.
absl::StatusOr<bool> ChooseCuda(const SessionOptions& o, MpiCommunicator* world, int world_size) {
  absl::StatusOr<std::string> mine = ChooseGpuHere(o, world_size);
  if (world == nullptr) {
    if (!mine.ok()) return mine.status();
    return !mine->empty();
  }
  struct Choice {
    int32_t code;
    int32_t cuda;
    char host[64];
    char gpu[64];
    char message[512];
  };
  Choice c{};
  c.code = static_cast<int32_t>(mine.status().code());
  c.cuda = mine.ok() && !mine->empty() ? 1 : 0;
  if (gethostname(c.host, sizeof(c.host) - 1) != 0) c.host[0] = '\0';
  if (c.cuda) std::snprintf(c.gpu, sizeof(c.gpu), "%s", mine->c_str());
  std::snprintf(c.message, sizeof(c.message), "%s", std::string(mine.status().message()).c_str());
  std::vector<Choice> all(world->rank() == 0 ? world_size : 1);
  RETURN_IF_ERROR(world->Gather(&c, sizeof(c), all.data(), 0));
  Choice verdict{};
  auto refuse = [&verdict](absl::StatusCode code, const std::string& message) {
    verdict.code = static_cast<int32_t>(code);
    std::snprintf(verdict.message, sizeof(verdict.message), "%s", message.c_str());
  };
  if (world->rank() == 0) {
    verdict.cuda = all[0].cuda;
    for (int r = 0; r < world_size && verdict.code == 0; ++r) {
      if (all[r].code != 0) {
        refuse(static_cast<absl::StatusCode>(all[r].code),
               absl::StrCat("rank ", r, ": ", all[r].message));
      } else if (all[r].cuda != verdict.cuda) {
        refuse(absl::StatusCode::kFailedPrecondition,
               absl::StrCat("--device ", o.device, ": rank 0 runs on the ",
                            verdict.cuda ? "GPU" : "CPU", " but rank ", r, " on the ",
                            all[r].cuda ? "GPU" : "CPU",
                            "; every rank of a job must use the same device (pass --device "
                            "cpu or --device cuda)"));
      }
      for (int q = 0; q < r && verdict.code == 0 && verdict.cuda && !o.share_gpu; ++q) {
        if (std::strncmp(all[q].host, all[r].host, sizeof(c.host)) == 0 &&
            std::strncmp(all[q].gpu, all[r].gpu, sizeof(c.gpu)) == 0) {
          refuse(absl::StatusCode::kFailedPrecondition,
                 absl::StrCat("--device ", o.device, ": ranks ", q, " and ", r, " on host ",
                              all[r].host, " would share GPU ", all[r].gpu,
                              ": one GPU per rank is needed (launch at most one rank per GPU, "
                              "or pass --share-gpu to let ranks share one",
                              o.device == "auto" ? ", or --device cpu)" : ")"));
        }
      }
    }
  }
  RETURN_IF_ERROR(world->Broadcast(&verdict, sizeof(verdict), 0));
  if (verdict.code != 0) {
    absl::Status err(static_cast<absl::StatusCode>(verdict.code), verdict.message);
    if (world->rank() != 0) err.SetPayload(kReportedByCoordinator, absl::Cord("1"));
    return err;
  }
  if (verdict.cuda && world->rank() == 0) {
    spdlog::info("device: a GPU per rank ({} ranks{}; device buffers over {})", world_size,
                 o.share_gpu ? ", sharing allowed" : "", o.device_comm);
  }
  return verdict.cuda != 0;
}

// Runs `check` on rank 0 and shares its outcome with every rank (a code and the message).
absl::Status RunCoordinatorCheck(const std::function<absl::Status()>& check,
                                 MpiCommunicator* world, bool coordinator) {
  absl::Status st = coordinator ? check() : absl::OkStatus();
  if (world == nullptr) return st;
  struct Outcome {
    int32_t code;
    char message[1020];
  } out{};
  out.code = static_cast<int32_t>(st.code());
  std::snprintf(out.message, sizeof(out.message), "%s", std::string(st.message()).c_str());
  RETURN_IF_ERROR(world->Broadcast(&out, sizeof(out), 0));
  if (coordinator || out.code == 0) return st;
  absl::Status theirs(static_cast<absl::StatusCode>(out.code), out.message);
  theirs.SetPayload(kReportedByCoordinator, absl::Cord("1"));
  return theirs;
}

}  // namespace

absl::Status CheckSlurmWireUp(int world_size) {
  // Only tasks of an srun step carry these (a batch script's own shell does not), so a
  // single-process run inside an allocation is left alone.
  const char* ntasks = std::getenv("SLURM_STEP_NUM_TASKS");
  if (world_size != 1 || ntasks == nullptr || std::getenv("SLURM_STEP_ID") == nullptr ||
      std::getenv("SLURM_PROCID") == nullptr) {
    return absl::OkStatus();
  }
  const int n = std::atoi(ntasks);
  if (n <= 1) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "this is task ", std::getenv("SLURM_PROCID"), " of a Slurm step of ", n,
      " tasks, but MPI was not wired up, so every task runs alone: launch with srun --mpi=pmix "
      "(launch/srun.sh does; `srun --mpi=list` shows what this Slurm offers)"));
}


absl::Status ConfigureThreads(MpiCommunicator* world) {
  struct Record {
    char host[64];
    uint8_t cpus[CPU_SETSIZE / 8];
  };
  Record mine{};
  if (gethostname(mine.host, sizeof(mine.host) - 1) != 0) mine.host[0] = '\0';
  for (int c : OwnCpus()) mine.cpus[c / 8] |= uint8_t(1u << (c % 8));
  const int size = world == nullptr ? 1 : world->size();
  const int rank = world == nullptr ? 0 : world->rank();
  std::vector<Record> all(size);
  if (world == nullptr) {
    all[0] = mine;
  } else {
    RETURN_IF_ERROR(world->Gather(&mine, sizeof(Record), all.data(), 0));
    RETURN_IF_ERROR(world->Broadcast(all.data(), sizeof(Record) * all.size(), 0));
  }
  std::vector<RankCpus> node;
  size_t me = 0;
  for (int r = 0; r < size; ++r) {
    if (std::strncmp(all[r].host, mine.host, sizeof(mine.host)) != 0) continue;
    if (r == rank) me = node.size();
    RankCpus rc{.world_rank = r};
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (all[r].cpus[c / 8] & (1u << (c % 8))) rc.cpus.push_back(c);
    }
    node.push_back(std::move(rc));
  }
  const NodeThreads plan = ChooseThreads(std::getenv("OMP_NUM_THREADS"), node);
  if (!plan.explicit_env) SetStepThreads(plan.threads[me]);
  if (me == 0) {  // the node's lowest rank speaks for it
    if (world == nullptr) {
      spdlog::info("threads: {}", plan.summary);
    } else {
      spdlog::info("threads on node {}: {}", mine.host, plan.summary);
    }
    if (!plan.oversubscribed.empty()) spdlog::warn("{}", plan.oversubscribed);
  }
  return absl::OkStatus();
}

bool ReportedByCoordinator(const absl::Status& status) {
  return status.GetPayload(kReportedByCoordinator).has_value();
}

absl::StatusOr<std::unique_ptr<ModelSession>> ModelSession::Open(const SessionOptions& options) {
  auto s = std::make_unique<ModelSession>();
  if (LaunchedUnderMpi()) {
    s->world_comm_ = MpiCommunicator::World(
        CommOptions{.timeout = options.comm_timeout, .shared_memory = options.shared_memory});
    s->world_rank = s->world_comm_->rank();
    s->world_size = s->world_comm_->size();
  }
  RETURN_IF_ERROR(CheckSlurmWireUp(s->world_size));
  RETURN_IF_ERROR(CheckWorldSize(s->world_size, options.ep, options.pp));
  RETURN_IF_ERROR(ConfigureThreads(s->world_comm_.get()));
  if (options.coordinator_check) {
    RETURN_IF_ERROR(
        RunCoordinatorCheck(options.coordinator_check, s->world_comm_.get(), s->world_rank == 0));
  }
  // Before anything is loaded, so that a --device the job cannot honour fails at once.
  ASSIGN_OR_RETURN(const bool use_cuda,
                   ChooseCuda(options, s->world_comm_.get(), s->world_size));
  s->on_gpu = use_cuda;
  if (s->world_comm_ != nullptr && s->world_size > 1) {
    // From here on a rank that dies, stops or hangs is named within seconds (loading too).
    s->progress_ = std::make_unique<ProgressMeter>();
    LivenessOptions live;
    live.timeout = options.liveness_timeout;
    live.interval = std::clamp(options.liveness_timeout / 20, absl::Milliseconds(20),
                               absl::Milliseconds(250));
    live.connect_timeout = options.comm_timeout;
    live.pipeline_stages = options.pp;
    ASSIGN_OR_RETURN(s->liveness_, Liveness::Start(*s->world_comm_, s->progress_.get(), live));
  }
  if (absl::Status st = Load(s.get(), options, use_cuda); !st.ok()) {
    // Rank 0 reports its own error; a worker tells rank 0 why it leaves.
    if (s->liveness_ != nullptr) s->liveness_->End(st);
    return st;
  }
  return s;
}

absl::Status ModelSession::Load(ModelSession* s, const SessionOptions& options, bool use_cuda) {
  const std::string& dir = options.model_dir;
  ASSIGN_OR_RETURN(s->config, LoadModelConfig(dir + "/config.json"));
  if (options.placement_file.empty()) {
    ASSIGN_OR_RETURN(s->placement, PlanPlacement(s->config, options.ep, options.pp));
  } else {
    ASSIGN_OR_RETURN(s->placement,
                     LoadPlacementFile(options.placement_file, s->config, options.ep, options.pp));
  }
  const Clock::time_point open_start = Clock::now();
  ASSIGN_OR_RETURN(s->checkpoint, SafetensorsCheckpoint::Open(dir));
  // A checkpoint without tokenizer.model (a synthetic one, say) serves token ids only.
  const std::string tokenizer_path = dir + "/tokenizer.model";
  if (s->is_coordinator() && !std::filesystem::exists(tokenizer_path)) {
    spdlog::info("{} not found: token ids only", tokenizer_path);
  } else if (s->is_coordinator()) {
    ASSIGN_OR_RETURN(s->tokenizer, Tokenizer::Load(tokenizer_path, s->config.bos_token_id,
                                                   s->config.eos_token_id));
  }
  const double open_secs = SecondsSince(open_start);
  const ShardSpec spec = s->placement.ShardFor(s->world_rank, s->config);
  const Clock::time_point load_start = Clock::now();
  LoadOptions load{.show_progress = options.show_progress && s->is_coordinator()};
  if (Liveness* live = s->liveness_.get()) {  // rank 0 logs the job's progress from these
    load.on_progress = [live](uint64_t done, uint64_t total) { live->SetLoadProgress(done, total); };
  }
  ASSIGN_OR_RETURN(s->weights, ModelWeights::Load(*s->checkpoint, s->config, spec, load));
  const double load_secs = SecondsSince(load_start);
  const Clock::time_point build_start = Clock::now();
  ASSIGN_OR_RETURN(const int blocks, KvPoolBlocks(options, s->config, s->placement,
                                                  use_cuda ? kCudaKvDType : kCpuKvDType));
  ASSIGN_OR_RETURN(const double peers_secs, s->BuildExecutor(options, spec, use_cuda, blocks));
  if (s->is_coordinator()) {
    for (int dp = 0; dp < s->placement.ep; ++dp) {
      s->allocators.push_back(std::make_unique<BlockAllocator>(blocks, options.block_size));
    }
  }
  // Where start-up time went, per rank (the slowest rank's weights usually dominate).
  const double resident = static_cast<double>(s->weights->resident_bytes());
  spdlog::info(
      "ready in {:.2f} s: checkpoint index and tokenizer {:.2f} s, weights {:.2f} s ({} at "
      "{}/s), executor and KV cache {:.2f} s, waiting for other ranks {:.2f} s",
      SecondsSince(open_start), open_secs, load_secs, ByteProgress::FormatBytes(resident),
      ByteProgress::FormatBytes(load_secs > 0 ? resident / load_secs : 0),
      SecondsSince(build_start) - peers_secs, peers_secs);
  return absl::OkStatus();
}

absl::StatusOr<int> KvPoolBlocks(const SessionOptions& options, const ModelConfig& config,
                                 const PlacementPlan& placement, KvDType dtype) {
  if (options.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV block size must be at least 1, got ", options.block_size));
  }
  const int64_t context_blocks =
      (config.max_position_embeddings + options.block_size - 1) / options.block_size;
  int64_t blocks = options.kv_blocks > 0 ? options.kv_blocks : context_blocks;
  if (options.kv_blocks <= 0 && options.kv_memory > 0) {
    // Every rank computes the same count (the coordinator's block tables index all of them),
    // from the stage with the most layers: the rank whose cache the budget must hold.
    int max_stage_layers = 0;
    for (const auto& [b, e] : placement.stage_layers) {
      max_stage_layers = std::max(max_stage_layers, e - b);
    }
    const uint64_t block_bytes =
        KvBytesPerToken(max_stage_layers, config.kv_dim(), dtype) * options.block_size;
    const int64_t budget = static_cast<int64_t>(std::min<uint64_t>(
        options.kv_memory / std::max<uint64_t>(block_bytes, 1), int64_t{1} << 62));
    blocks = std::clamp<int64_t>(budget, context_blocks,
                                 context_blocks * std::max(1, options.kv_max_sequences));
  }
  if (blocks > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache of ", blocks, " blocks is too large"));
  }
  return static_cast<int>(blocks);
}

absl::StatusOr<double> ModelSession::BuildExecutor(const SessionOptions& options,
                                                   const ShardSpec& spec, bool use_cuda,
                                                   int kv_blocks) {
  const KvPoolOptions kv{.num_blocks = kv_blocks, .block_size = options.block_size};
  const ForwardLimits limits{.max_tokens = options.max_step_tokens,
                             .max_context = config.max_position_embeddings};
  if (world_size == 1) {
    world_comm_.reset();  // `mpirun -np 1` runs exactly like a plain process
    if (use_cuda) {
      ASSIGN_OR_RETURN(executor, MakeCudaExecutor(*weights, kv, limits));
    } else {
      executor = std::make_unique<LocalExecutor>(*weights, kv, limits);
    }
    return 0.0;
  }
  double peers_secs = 0;
  const ParallelShape shape{.ep = options.ep, .pp = options.pp, .world_rank = world_rank};
  const Clock::time_point split_start = Clock::now();  // a collective: waits for every rank
  ASSIGN_OR_RETURN(ep_comm_, world_comm_->Split(shape.stage(), shape.ep_rank(),
                                                absl::StrCat("ep(stage ", shape.stage(), ")")));
  peers_secs += SecondsSince(split_start);
  if (use_cuda) {
    ASSIGN_OR_RETURN(cuda_worker_,
                     MakeCudaWorker(*weights, shape, world_comm_.get(), ep_comm_.get(),
                                    placement.expert_ranks, kv, limits,
                                    {.device_comm = options.device_comm,
                                     .deadline = options.comm_timeout}));
    worker_ = cuda_worker_->worker();
  } else {
    owned_worker_ = std::make_unique<DistributedWorker>(
        *weights, shape, world_comm_.get(), ep_comm_.get(), placement.expert_ranks, kv, limits);
    worker_ = owned_worker_.get();
  }
  worker_->set_progress(progress_.get());
  worker_->set_expert_source(weights.get(), checkpoint.get());
  LogShard(*this, spec, worker_->backend().kv_bytes());
  // Every rank has its shard and its communicators before the first step.
  const Clock::time_point barrier_start = Clock::now();
  RETURN_IF_ERROR(world_comm_->Barrier());
  peers_secs += SecondsSince(barrier_start);
  if (is_coordinator()) {
    auto exec = std::make_unique<DistributedExecutor>(worker_);
    distributed_ = exec.get();
    executor = std::move(exec);
  }
  return peers_secs;
}

absl::Status ModelSession::RunWorker() {
  if (worker_ == nullptr) return absl::FailedPreconditionError("not a distributed session");
  absl::Status st = RunWorkerLoop(worker_);
  if (liveness_ != nullptr) liveness_->End(st);
  return st;
}

absl::Status ModelSession::Shutdown() {
  if (distributed_ == nullptr) return absl::OkStatus();
  // Goodbye first: the workers' connections close after it without alarming anyone.
  if (liveness_ != nullptr) liveness_->Stop();
  return distributed_->Shutdown();
}

}  // namespace switchyard
