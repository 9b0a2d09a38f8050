#include "coordinator/model_session.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/mpi_communicator.h"
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
  std::fprintf(stderr,
               "[rank %d] stage %d, ep rank %d: layers [%d, %d), experts {%s}%s%s: weights %s, "
               "KV cache %s\n",
               s.world_rank, s.world_rank / s.placement.ep, s.world_rank % s.placement.ep,
               spec.layer_begin, spec.layer_end, experts.c_str(),
               spec.has_embedding ? ", embedding" : "", spec.has_head ? ", head" : "",
               ByteProgress::FormatBytes(s.weights->resident_bytes()).c_str(),
               ByteProgress::FormatBytes(kv_bytes).c_str());
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelSession>> ModelSession::Open(const SessionOptions& options) {
  auto s = std::make_unique<ModelSession>();
  const std::string& dir = options.model_dir;
  if (LaunchedUnderMpi()) {
    s->world_comm_ = MpiCommunicator::World(CommOptions{.timeout = options.comm_timeout});
    s->world_rank = s->world_comm_->rank();
    s->world_size = s->world_comm_->size();
  }
  RETURN_IF_ERROR(CheckWorldSize(s->world_size, options.ep, options.pp));
  if (options.device != "auto" && options.device != "cpu" && options.device != "cuda") {
    return absl::InvalidArgumentError("--device must be auto, cpu or cuda, got " + options.device);
  }
  const bool gpu = options.device != "cpu" && CudaDeviceAvailable();  // probed once
  if (options.device == "cuda" && !gpu) {
    return absl::FailedPreconditionError(
        "--device cuda: no usable CUDA device (or this build has no CUDA backend)");
  }
  if (options.device == "cuda" && s->world_size > 1) {
    return absl::UnimplementedError(
        "--device cuda runs single-process jobs; distributed jobs run with --device cpu");
  }
  const bool use_cuda = gpu && s->world_size == 1;
  if (gpu && s->world_size > 1 && s->world_rank == 0) {
    std::fprintf(stderr,
                 "switchyard: note: a GPU is present, but distributed jobs run on the CPU "
                 "executor (the CUDA executor serves single-process jobs)\n");
  }
  ASSIGN_OR_RETURN(s->config, LoadModelConfig(dir + "/config.json"));
  if (options.placement_file.empty()) {
    ASSIGN_OR_RETURN(s->placement, PlanPlacement(s->config, options.ep, options.pp));
  } else {
    ASSIGN_OR_RETURN(s->placement,
                     LoadPlacementFile(options.placement_file, s->config, options.ep, options.pp));
  }
  ASSIGN_OR_RETURN(s->checkpoint, SafetensorsCheckpoint::Open(dir));
  // A checkpoint without tokenizer.model (a synthetic one, say) serves token ids only.
  const std::string tokenizer_path = dir + "/tokenizer.model";
  if (s->is_coordinator() && !std::filesystem::exists(tokenizer_path)) {
    std::fprintf(stderr, "switchyard: note: %s not found: token ids only\n",
                 tokenizer_path.c_str());
  } else if (s->is_coordinator()) {
    ASSIGN_OR_RETURN(s->tokenizer, Tokenizer::Load(tokenizer_path, s->config.bos_token_id,
                                                   s->config.eos_token_id));
  }
  const ShardSpec spec = s->placement.ShardFor(s->world_rank, s->config);
  ASSIGN_OR_RETURN(s->weights,
                   ModelWeights::Load(*s->checkpoint, s->config, spec,
                                      {.show_progress = options.show_progress &&
                                                        s->is_coordinator()}));
  const int context = s->config.max_position_embeddings;
  const int64_t context_blocks = (context + options.block_size - 1) / options.block_size;
  int64_t blocks = options.kv_blocks > 0 ? options.kv_blocks : context_blocks;
  if (options.kv_blocks <= 0 && options.kv_memory > 0) {
    // Every rank computes the same count: the coordinator's block tables index all of them.
    int max_stage_layers = 0;
    for (const auto& [b, e] : s->placement.stage_layers) {
      max_stage_layers = std::max(max_stage_layers, e - b);
    }
    const uint64_t block_bytes = uint64_t{2} * max_stage_layers * options.block_size *
                                 static_cast<uint64_t>(s->config.kv_dim()) * sizeof(float);
    const int64_t budget = static_cast<int64_t>(options.kv_memory / std::max<uint64_t>(block_bytes, 1));
    blocks = std::clamp<int64_t>(budget, context_blocks,
                                 context_blocks * std::max(1, options.kv_max_sequences));
  }
  if (blocks > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache of ", blocks, " blocks is too large"));
  }
  const KvPoolOptions kv{.num_blocks = static_cast<int>(blocks), .block_size = options.block_size};
  const ForwardLimits limits{.max_tokens = options.max_step_tokens, .max_context = context};
  if (s->world_size == 1) {
    s->world_comm_.reset();  // `mpirun -np 1` runs exactly like a plain process
    if (use_cuda) {
      ASSIGN_OR_RETURN(s->executor, MakeCudaExecutor(*s->weights, kv, limits));
    } else {
      s->executor = std::make_unique<LocalExecutor>(*s->weights, kv, limits);
    }
  } else {
    const ParallelShape shape{.ep = options.ep, .pp = options.pp, .world_rank = s->world_rank};
    ASSIGN_OR_RETURN(s->ep_comm_,
                     s->world_comm_->Split(shape.stage(), shape.ep_rank(),
                                           absl::StrCat("ep(stage ", shape.stage(), ")")));
    s->worker_ = std::make_unique<DistributedWorker>(*s->weights, shape, s->world_comm_.get(),
                                                     s->ep_comm_.get(), s->placement.expert_ranks,
                                                     kv, limits);
    LogShard(*s, spec, s->worker_->kv_cache().shape().bytes());
    // Every rank has its shard and its communicators before the first step.
    RETURN_IF_ERROR(s->world_comm_->Barrier());
    if (s->is_coordinator()) {
      auto exec = std::make_unique<DistributedExecutor>(s->worker_.get());
      s->distributed_ = exec.get();
      s->executor = std::move(exec);
    }
  }
  if (s->is_coordinator()) {
    for (int dp = 0; dp < s->placement.ep; ++dp) {
      s->allocators.push_back(std::make_unique<BlockAllocator>(blocks, options.block_size));
    }
  }
  return s;
}

absl::Status ModelSession::RunWorker() {
  if (worker_ == nullptr) return absl::FailedPreconditionError("not a distributed session");
  return RunWorkerLoop(worker_.get());
}

absl::Status ModelSession::Shutdown() {
  if (distributed_ == nullptr) return absl::OkStatus();
  return distributed_->Shutdown();
}

}  // namespace switchyard
