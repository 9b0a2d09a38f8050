#include "comm/nccl_communicator.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/job_failure.h"
#include "common/status_macros.h"
#include "common/steady_time.h"

namespace switchyard {
namespace {

// Polling: this many checks back to back, then sleeps from kFirstSleep doubling up to
// kMaxSleep (so ranks oversubscribed on few cores do not starve each other).
constexpr int kSpinPolls = 64;
constexpr absl::Duration kFirstSleep = absl::Microseconds(20);
constexpr absl::Duration kMaxSleep = absl::Milliseconds(1);

class Backoff {
 public:
  void Pause() {
    if (++polls_ <= kSpinPolls) return;
    absl::SleepFor(sleep_);
    sleep_ = std::min(sleep_ * 2, kMaxSleep);
  }

 private:
  int polls_ = 0;
  absl::Duration sleep_ = kFirstSleep;
};

std::string NcclError(ncclComm_t comm, ncclResult_t r) {
  std::string msg = ncclGetErrorString(r);
  const char* last = comm != nullptr ? ncclGetLastError(comm) : ncclGetLastError(nullptr);
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&msg, ": ", last);
  return msg;
}

// What rank 0 broadcasts: whether it could create the id, and the id.
struct IdMessage {
  int32_t ok = 0;
  ncclUniqueId id;
};

}  // namespace

NcclCommunicator::NcclCommunicator(std::string name, const CommOptions& options,
                                   cudaStream_t external_stream)
    : name_(std::move(name)), options_(options), external_stream_(external_stream) {}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    Communicator* bootstrap, const NcclOptions& options) {
  IdMessage msg;
  std::string id_error;
  if (bootstrap->rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&msg.id);
    msg.ok = r == ncclSuccess;
    if (r != ncclSuccess) id_error = NcclError(nullptr, r);
  }
  // Every rank takes part in the broadcast, even when rank 0 failed, so none is left waiting.
  RETURN_IF_ERROR(bootstrap->Broadcast(&msg, sizeof(msg), 0));
  if (!msg.ok) {
    return absl::UnavailableError(absl::StrCat("NCCL init of group '", options.name,
                                               "': rank 0 could not create the unique id",
                                               id_error.empty() ? "" : ": ", id_error));
  }
  std::unique_ptr<NcclCommunicator> c(
      new NcclCommunicator(options.name, options.comm, options.stream));
  RETURN_IF_ERROR(c->InitResources());
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t r =
      ncclCommInitRankConfig(&comm, bootstrap->size(), msg.id, bootstrap->rank(), &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return absl::UnavailableError(absl::StrCat("NCCL init of group '", options.name,
                                               "': ncclCommInitRankConfig: ", NcclError(comm, r)));
  }
  RETURN_IF_ERROR(c->Adopt(comm, "init"));
  return c;
}

absl::Status NcclCommunicator::InitResources() {
  if (external_stream_ != nullptr) {
    stream_ = external_stream_;
  } else {
    const cudaError_t err = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (err != cudaSuccess) {
      stream_ = nullptr;
      return absl::UnavailableError(
          absl::StrCat("group '", name_, "': cudaStreamCreate: ", cudaGetErrorString(err)));
    }
  }
  const cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&barrier_word_), sizeof(int));
  if (err != cudaSuccess) {
    barrier_word_ = nullptr;
    return absl::ResourceExhaustedError(
        absl::StrCat("group '", name_, "': cudaMalloc: ", cudaGetErrorString(err)));
  }
  const cudaError_t zero = cudaMemsetAsync(barrier_word_, 0, sizeof(int), stream_);
  if (zero == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("group '", name_, "': cudaMemset: ", cudaGetErrorString(zero)));
}

absl::Status NcclCommunicator::Adopt(ncclComm_t comm, absl::string_view op) {
  comm_ = comm;
  RETURN_IF_ERROR(WaitReady(comm_, op));
  int rank = 0, size = 0;
  ncclResult_t r = ncclCommUserRank(comm_, &rank);
  if (r == ncclSuccess) r = ncclCommCount(comm_, &size);
  if (r != ncclSuccess) {
    return Fail(absl::UnavailableError(
        absl::StrCat("NCCL ", op, " of group '", name_, "': ", NcclError(comm_, r))));
  }
  rank_ = rank;
  size_ = size;
  return absl::OkStatus();
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    // Flush outstanding work (bounded by the timeout), then free; abort if that fails.
    const ncclResult_t r = ncclCommFinalize(comm_);
    const bool finalized =
        (r == ncclSuccess || r == ncclInProgress) && WaitReady(comm_, "finalize").ok();
    if (comm_ != nullptr) {  // WaitReady aborts and clears comm_ when it fails
      if (finalized) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
      comm_ = nullptr;
    }
  }
  if (barrier_word_ != nullptr) cudaFree(barrier_word_);
  if (stream_ != nullptr && external_stream_ == nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Split(int color, int key,
                                                                          const std::string& name) {
  RETURN_IF_ERROR(CheckUsable("Split"));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t child = nullptr;
  RETURN_IF_ERROR(
      Enqueued(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &config),
               "Split", "ncclCommSplit"));
  // The split is collective over the parent: wait for the parent to finish its part.
  absl::Status parent = WaitReady(comm_, "Split");
  if (!parent.ok()) {
    if (child != nullptr) ncclCommAbort(child);
    return parent;
  }
  if (color < 0 || child == nullptr) return std::unique_ptr<NcclCommunicator>();
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(name, options_, external_stream_));
  absl::Status st = c->InitResources();
  if (!st.ok()) {
    ncclCommAbort(child);
    return st;
  }
  RETURN_IF_ERROR(c->Adopt(child, "Split"));
  return c;
}

absl::Status NcclCommunicator::CheckUsable(absl::string_view op) const {
  if (!broken_ && comm_ != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "NCCL ", op, " on group '", name_, "': the communicator failed earlier and is unusable"));
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  broken_ = true;
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  return status;
}

absl::Status NcclCommunicator::Enqueued(ncclResult_t r, absl::string_view op,
                                        absl::string_view call) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return Fail(absl::UnavailableError(
      absl::StrCat("NCCL ", op, " on group '", name_, "': ", call, ": ", NcclError(comm_, r))));
}

std::string NcclCommunicator::Describe(absl::string_view op, int peer) const {
  std::string s =
      absl::StrCat("NCCL ", op, " on group '", name_, "' (rank ", rank_, " of ", size_, ")");
  if (peer >= 0) absl::StrAppend(&s, " with rank ", peer);
  return s;
}

absl::Status NcclCommunicator::WaitReady(ncclComm_t comm, absl::string_view op) {
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Backoff backoff;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      const std::string msg =
          absl::StrCat(Describe(op, -1), ": ", NcclError(comm, r != ncclSuccess ? r : state));
      if (comm != comm_) ncclCommAbort(comm);
      return Fail(absl::UnavailableError(msg));
    }
    if (state == ncclSuccess) return absl::OkStatus();
    if (JobFailed()) {  // the liveness channel declared a rank failed: stop waiting for it
      if (comm != comm_) ncclCommAbort(comm);
      return Fail(JobFailure());
    }
    if (SteadyNow() > deadline) {
      const std::string msg = absl::StrCat(Describe(op, -1), " did not complete within ",
                                           absl::FormatDuration(options_.timeout),
                                           ": a peer did not take part (NCCL does not say which)");
      if (comm != comm_) ncclCommAbort(comm);
      return Fail(absl::DeadlineExceededError(msg));
    }
    backoff.Pause();
  }
}

absl::Status NcclCommunicator::Wait(absl::string_view op, int peer) {
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Backoff backoff;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      return Fail(absl::UnavailableError(
          absl::StrCat(Describe(op, peer), ": ", NcclError(comm_, r != ncclSuccess ? r : state))));
    }
    if (state == ncclSuccess) {  // everything is enqueued: wait for the stream
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        return Fail(absl::UnavailableError(
            absl::StrCat(Describe(op, peer), ": cudaStreamQuery: ", cudaGetErrorString(q))));
      }
    }
    if (JobFailed()) return Fail(JobFailure());  // aborts the NCCL communicator
    if (SteadyNow() > deadline) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(
          Describe(op, peer), " did not complete within ", absl::FormatDuration(options_.timeout),
          peer >= 0 ? ": the peer did not take part"
                    : ": a peer did not take part (NCCL does not say which)")));
    }
    backoff.Pause();
  }
}

absl::Status NcclCommunicator::AllToAllV(const void* send, std::span<const size_t> send_counts,
                                         std::span<const size_t> send_offsets, void* recv,
                                         std::span<const size_t> recv_counts,
                                         std::span<const size_t> recv_offsets) {
  constexpr absl::string_view kOp = "AllToAllV";
  RETURN_IF_ERROR(CheckUsable(kOp));
  const size_t n = static_cast<size_t>(size_);
  if (send_counts.size() != n || send_offsets.size() != n || recv_counts.size() != n ||
      recv_offsets.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(kOp, -1), ": count/offset spans must have ", n, " entries"));
  }
  const char* s = static_cast<const char*>(send);
  char* d = static_cast<char*>(recv);
  ncclResult_t first = ncclSuccess;
  const char* call = "";
  auto keep = [&](ncclResult_t r, const char* what) {
    if (first == ncclSuccess && r != ncclSuccess && r != ncclInProgress) {
      first = r;
      call = what;
    }
  };
  keep(ncclGroupStart(), "ncclGroupStart");
  for (int p = 0; p < size_; ++p) {
    if (send_counts[p] > 0) {
      keep(ncclSend(s + send_offsets[p], send_counts[p], ncclUint8, p, comm_, stream_), "ncclSend");
    }
    if (recv_counts[p] > 0) {
      keep(ncclRecv(d + recv_offsets[p], recv_counts[p], ncclUint8, p, comm_, stream_), "ncclRecv");
    }
  }
  keep(ncclGroupEnd(), "ncclGroupEnd");
  RETURN_IF_ERROR(Enqueued(first, kOp, call));
  return Wait(kOp);
}

absl::Status NcclCommunicator::AllToAll(const void* send, void* recv, size_t bytes) {
  std::vector<size_t> counts(size_, bytes), offsets(size_);
  for (int p = 0; p < size_; ++p) offsets[p] = bytes * p;
  return AllToAllV(send, counts, offsets, recv, counts, offsets);
}

absl::Status NcclCommunicator::CheckPointToPoint(absl::string_view op, int peer, int tag) const {
  RETURN_IF_ERROR(CheckUsable(op));
  if (peer < 0 || peer >= size_ || tag < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(op, -1), ": bad peer ", peer, " or tag ", tag));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  constexpr absl::string_view kOp = "Send";
  RETURN_IF_ERROR(CheckPointToPoint(kOp, peer, tag));
  if (bytes == 0) return absl::OkStatus();
  RETURN_IF_ERROR(
      Enqueued(ncclSend(data, bytes, ncclUint8, peer, comm_, stream_), kOp, "ncclSend"));
  return Wait(kOp, peer);
}

absl::Status NcclCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  constexpr absl::string_view kOp = "Recv";
  RETURN_IF_ERROR(CheckPointToPoint(kOp, peer, tag));
  if (bytes == 0) return absl::OkStatus();
  RETURN_IF_ERROR(
      Enqueued(ncclRecv(data, bytes, ncclUint8, peer, comm_, stream_), kOp, "ncclRecv"));
  return Wait(kOp, peer);
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t bytes, int root) {
  constexpr absl::string_view kOp = "Broadcast";
  RETURN_IF_ERROR(CheckUsable(kOp));
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(kOp, -1), ": bad root ", root));
  }
  if (bytes == 0) return absl::OkStatus();
  RETURN_IF_ERROR(Enqueued(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), kOp,
                           "ncclBroadcast"));
  return Wait(kOp);
}

absl::Status NcclCommunicator::Gather(const void* send, size_t bytes, void* recv, int root) {
  constexpr absl::string_view kOp = "Gather";
  RETURN_IF_ERROR(CheckUsable(kOp));
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(kOp, -1), ": bad root ", root));
  }
  if (bytes == 0) return absl::OkStatus();
  ncclResult_t first = ncclSuccess;
  const char* call = "";
  auto keep = [&](ncclResult_t r, const char* what) {
    if (first == ncclSuccess && r != ncclSuccess && r != ncclInProgress) {
      first = r;
      call = what;
    }
  };
  keep(ncclGroupStart(), "ncclGroupStart");
  keep(ncclSend(send, bytes, ncclUint8, root, comm_, stream_), "ncclSend");
  if (rank_ == root) {
    char* d = static_cast<char*>(recv);
    for (int p = 0; p < size_; ++p) {
      keep(ncclRecv(d + bytes * p, bytes, ncclUint8, p, comm_, stream_), "ncclRecv");
    }
  }
  keep(ncclGroupEnd(), "ncclGroupEnd");
  RETURN_IF_ERROR(Enqueued(first, kOp, call));
  return Wait(kOp);
}

absl::Status NcclCommunicator::Barrier() {
  constexpr absl::string_view kOp = "Barrier";
  RETURN_IF_ERROR(CheckUsable(kOp));
  RETURN_IF_ERROR(
      Enqueued(ncclAllReduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, comm_, stream_),
               kOp, "ncclAllReduce"));
  return Wait(kOp);
}

}  // namespace switchyard
