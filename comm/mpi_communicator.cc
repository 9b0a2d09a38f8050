#include "comm/mpi_communicator.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/host_shared_segment.h"
#include "comm/job_failure.h"
#include "comm/poll_backoff.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/steady_time.h"

namespace switchyard {
namespace {

// Internal tags, above every user tag (MPI guarantees tags up to 32767). One per kind of
// collective traffic; successive collectives on a communicator reuse them safely because all
// ranks issue collectives in the same order and MPI matches messages between two ranks with
// the same tag in the order they were sent.
static_assert(kMaxUserTag < 1000);
constexpr int kTagAllToAll = 1001;
constexpr int kTagBroadcast = 1002;
constexpr int kTagGather = 1003;
constexpr int kTagBarrierUp = 1004;
constexpr int kTagBarrierDown = 1005;


// "MPI_Isend(buf, ...)" -> "MPI_Isend".
absl::string_view CallName(absl::string_view expr) { return expr.substr(0, expr.find('(')); }

// "/work/main/comm/mpi_communicator.cc" -> "comm/mpi_communicator.cc".
absl::string_view ShortFile(absl::string_view file) {
  size_t slash = file.rfind('/');
  if (slash != absl::string_view::npos && slash > 0) slash = file.rfind('/', slash - 1);
  return slash == absl::string_view::npos ? file : file.substr(slash + 1);
}

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return absl::StrCat("MPI error ", code);
  return std::string(text, len);
}

// Releases a request that will not be waited for: receives are cancelled (and completed when
// the cancel takes effect at once, as it does for an unmatched receive), sends are freed.
void Abandon(MPI_Request* request, bool is_recv) {
  if (*request == MPI_REQUEST_NULL) return;
  if (is_recv) {
    MPI_Cancel(request);
    int done = 0;
    MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (done) return;
  }
  MPI_Request_free(request);
}

}  // namespace

// Converts an MPI return code into a status at the call site, marking the communicator
// unusable. Used only inside MpiCommunicator members.
#define SY_MPI_CALL(op, expr)                                               \
  do {                                                                      \
    const int sy_mpi_rc_ = (expr);                                          \
    if (sy_mpi_rc_ != MPI_SUCCESS) {                                        \
      return MpiError(sy_mpi_rc_, CallName(#expr), op, __FILE__, __LINE__); \
    }                                                                       \
  } while (0)

// The requests of one operation. Whatever is still pending when it goes out of scope (on an
// error path) is abandoned.
struct MpiCommunicator::Pending {
  struct Info {
    int peer;
    bool is_recv;
    int bytes;  // of this message (one chunk)
  };
  std::vector<MPI_Request> requests;
  std::vector<Info> info;

  Pending() = default;
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;
  ~Pending() { AbandonAll(); }
  void AbandonAll() {
    for (size_t i = 0; i < requests.size(); ++i) Abandon(&requests[i], info[i].is_recv);
  }
};

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, const CommOptions& options)
    : comm_(comm), name_(std::move(name)), options_(options) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  std::vector<int> ranks(size_);
  for (int r = 0; r < size_; ++r) ranks[r] = r;
  world_ranks_.assign(size_, MPI_UNDEFINED);
  MPI_Group group, world_group;
  MPI_Comm_group(comm_, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  MPI_Group_translate_ranks(group, size_, ranks.data(), world_group, world_ranks_.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::World(const CommOptions& options) {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, "world", options));
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Split(int color, int key,
                                                                        std::string name) {
  return Split(color, key, std::move(name), options_);
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Split(
    int color, int key, std::string name, const CommOptions& options) {
  constexpr absl::string_view op = "Split";
  RETURN_IF_ERROR(CheckUsable(op));
  RETURN_IF_ERROR(BarrierImpl(op));
  MPI_Comm comm = MPI_COMM_NULL;
  SY_MPI_CALL(op, MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &comm));
  if (comm == MPI_COMM_NULL) return std::unique_ptr<MpiCommunicator>();
  auto result =
      std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, std::move(name), options));
  result->max_message_bytes_ = max_message_bytes_;
  return result;
}

void MpiCommunicator::set_max_message_bytes(size_t bytes) {
  max_message_bytes_ = std::clamp<size_t>(bytes, 1, INT_MAX);
}

absl::Status MpiCommunicator::CheckUsable(absl::string_view op) const {
  if (JobFailed()) return JobFailure();
  if (!broken_) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(op, ": communicator ", name_, " is unusable after an earlier failure"));
}

absl::Status MpiCommunicator::Fail(absl::Status status) {
  broken_ = true;
  return status;
}

absl::Status MpiCommunicator::MpiError(int code, absl::string_view call, absl::string_view op,
                                       const char* file, int line) {
  return Fail(absl::UnavailableError(absl::StrCat(
      call, " failed in ", op, " on group ", name_, " (rank ", rank_, ", world rank ",
      world_ranks_[rank_], "): ", MpiErrorString(code), " [", ShortFile(file), ":", line, "]")));
}

absl::Status MpiCommunicator::PostRecv(Pending& p, absl::string_view op, void* data, size_t bytes,
                                       int peer, int tag) {
  char* at = static_cast<char*>(data);
  do {  // at least one message, possibly empty
    const int n = static_cast<int>(std::min(bytes, max_message_bytes_));
    MPI_Request request = MPI_REQUEST_NULL;
    SY_MPI_CALL(op, MPI_Irecv(at, n, MPI_BYTE, peer, tag, comm_, &request));
    p.requests.push_back(request);
    p.info.push_back({peer, true, n});
    at += n;
    bytes -= n;
  } while (bytes > 0);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::PostSend(Pending& p, absl::string_view op, const void* data,
                                       size_t bytes, int peer, int tag) {
  const char* at = static_cast<const char*>(data);
  do {
    const int n = static_cast<int>(std::min(bytes, max_message_bytes_));
    MPI_Request request = MPI_REQUEST_NULL;
    SY_MPI_CALL(op, MPI_Isend(at, n, MPI_BYTE, peer, tag, comm_, &request));
    p.requests.push_back(request);
    p.info.push_back({peer, false, n});
    at += n;
    bytes -= n;
  } while (bytes > 0);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Wait(Pending& p, absl::string_view op, absl::Time deadline) {
  const int n = static_cast<int>(p.requests.size());
  std::vector<int> indices(n);
  std::vector<MPI_Status> statuses(n);
  PollBackoff backoff;  // polling MPI_Testsome (comm/poll_backoff.h)
  // Whom this rank waits for, for the liveness channel's progress check: the first peer with
  // a request still outstanding.
  auto mark = [&] {
    for (int i = 0; i < n; ++i) {
      if (p.requests[i] != MPI_REQUEST_NULL) return EnterWait(world_ranks_[p.info[i].peer]);
    }
  };
  mark();
  struct Unmark {
    ~Unmark() { LeaveWait(); }
  } unmark;
  while (true) {
    int completed = 0;
    const int rc = MPI_Testsome(n, p.requests.data(), &completed, indices.data(), statuses.data());
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
      return MpiError(rc, "MPI_Testsome", op, __FILE__, __LINE__);
    }
    if (completed == MPI_UNDEFINED) return absl::OkStatus();  // no request left
    for (int i = 0; i < completed; ++i) {
      const Pending::Info& info = p.info[indices[i]];
      const MPI_Status& status = statuses[i];
      if (rc == MPI_ERR_IN_STATUS && status.MPI_ERROR != MPI_SUCCESS) {
        return MpiError(status.MPI_ERROR, info.is_recv ? "MPI_Irecv" : "MPI_Isend",
                        absl::StrCat(op, " (peer rank ", info.peer, ")"), __FILE__, __LINE__);
      }
      if (info.is_recv) {
        int got = 0;
        MPI_Get_count(&status, MPI_BYTE, &got);
        if (got != info.bytes) {
          return Fail(absl::InternalError(absl::StrCat(
              op, " on group ", name_, ": rank ", info.peer, " sent ", got, " bytes where rank ",
              rank_, " expected ", info.bytes, " (ranks disagree on the counts)")));
        }
      }
    }
    if (completed > 0) {
      mark();
      backoff.Progressed();
      continue;
    }
    // Another thread (the liveness channel) learned that the job cannot go on.
    if (JobFailed()) return Fail(JobFailure());
    const absl::Time now = SteadyNow();
    if (now >= deadline) return DeadlineError(p, op);
    backoff.Idle(now);
  }
}

std::string MpiCommunicator::Ranks(const std::vector<int>& group_ranks) const {
  std::vector<int> world;
  for (int r : group_ranks) world.push_back(world_ranks_[r]);
  return absl::StrCat("rank(s) ", absl::StrJoin(group_ranks, ", "), " (world rank(s) ",
                      absl::StrJoin(world, ", "), ")");
}

absl::Status MpiCommunicator::DeadlineError(const Pending& p, absl::string_view op) {
  std::vector<int> no_data, not_taken;  // group ranks, ascending, unique
  for (size_t i = 0; i < p.requests.size(); ++i) {
    if (p.requests[i] == MPI_REQUEST_NULL) continue;
    (p.info[i].is_recv ? no_data : not_taken).push_back(p.info[i].peer);
  }
  for (auto* v : {&no_data, &not_taken}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  std::vector<std::string> parts;
  if (!no_data.empty()) parts.push_back(absl::StrCat("no data from ", Ranks(no_data)));
  if (!not_taken.empty()) {
    parts.push_back(absl::StrCat(Ranks(not_taken), " did not take delivery"));
  }
  return Fail(absl::DeadlineExceededError(
      absl::StrCat(op, " on group ", name_, ": ", absl::StrJoin(parts, "; "), " after ",
                   absl::FormatDuration(options_.timeout), " (waiting: rank ", rank_,
                   ", world rank ", world_ranks_[rank_], ")")));
}

absl::Status MpiCommunicator::AllToAllV(const void* send, std::span<const size_t> send_counts,
                                        std::span<const size_t> send_offsets, void* recv,
                                        std::span<const size_t> recv_counts,
                                        std::span<const size_t> recv_offsets) {
  return AllToAllVImpl("AllToAllV", send, send_counts, send_offsets, recv, recv_counts,
                       recv_offsets);
}

absl::Status MpiCommunicator::AllToAllVFilled(const std::function<void(int peer)>& fill,
                                              const void* send,
                                              std::span<const size_t> send_counts,
                                              std::span<const size_t> send_offsets, void* recv,
                                              std::span<const size_t> recv_counts,
                                              std::span<const size_t> recv_offsets) {
  if (send_counts.size() > static_cast<size_t>(rank_) && send_counts[rank_] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllToAllVFilled on group ", name_, ": the block to rank ", rank_, " itself must be empty"));
  }
  return AllToAllVImpl("AllToAllV", send, send_counts, send_offsets, recv, recv_counts,
                       recv_offsets, &fill);
}

absl::Status MpiCommunicator::AllToAllVImpl(absl::string_view op, const void* send,
                                            std::span<const size_t> send_counts,
                                            std::span<const size_t> send_offsets, void* recv,
                                            std::span<const size_t> recv_counts,
                                            std::span<const size_t> recv_offsets,
                                            const std::function<void(int peer)>* fill) {
  RETURN_IF_ERROR(CheckUsable(op));
  const size_t P = static_cast<size_t>(size_);
  if (send_counts.size() != P || send_offsets.size() != P || recv_counts.size() != P ||
      recv_offsets.size() != P) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " on group ", name_, ": counts and offsets need ", P, " entries"));
  }
  if (send_counts[rank_] != recv_counts[rank_]) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " on group ", name_, ": rank ", rank_, " sends ", send_counts[rank_],
                     " bytes to itself but expects ", recv_counts[rank_]));
  }
  const char* s = static_cast<const char*>(send);
  char* r = static_cast<char*>(recv);
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Pending p;
  // Receives first, so that sends find them posted; peers in a rotated order so that not
  // every rank talks to rank 0 first.
  for (int i = 1; i < size_; ++i) {
    const int peer = (rank_ + size_ - i) % size_;
    if (recv_counts[peer] == 0) continue;
    RETURN_IF_ERROR(PostRecv(p, op, r + recv_offsets[peer], recv_counts[peer], peer, kTagAllToAll));
  }
  for (int i = 1; i < size_; ++i) {
    const int peer = (rank_ + i) % size_;
    if (send_counts[peer] == 0) continue;
    if (fill != nullptr) (*fill)(peer);
    RETURN_IF_ERROR(PostSend(p, op, s + send_offsets[peer], send_counts[peer], peer, kTagAllToAll));
  }
  if (send_counts[rank_] > 0) {
    std::memcpy(r + recv_offsets[rank_], s + send_offsets[rank_], send_counts[rank_]);
  }
  return Wait(p, op, deadline);
}

absl::Status MpiCommunicator::AllToAll(const void* send, void* recv, size_t bytes) {
  std::vector<size_t> counts(size_, bytes), offsets(size_);
  for (int r = 0; r < size_; ++r) offsets[r] = r * bytes;
  return AllToAllVImpl("AllToAll", send, counts, offsets, recv, counts, offsets);
}

namespace {

absl::Status CheckPeer(absl::string_view op, const std::string& name, int rank, int size, int peer,
                       int tag) {
  if (peer < 0 || peer >= size || peer == rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " on group ", name, ": peer ", peer, " is not another rank of ", size));
  }
  if (tag < 0 || tag > kMaxUserTag) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " on group ", name, ": tag ", tag, " outside [0, ", kMaxUserTag, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckRoot(absl::string_view op, const std::string& name, int size, int root) {
  if (root >= 0 && root < size) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, " on group ", name, ": root ", root, " outside [0, ", size, ")"));
}

}  // namespace

absl::Status MpiCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  constexpr absl::string_view op = "Send";
  RETURN_IF_ERROR(CheckUsable(op));
  RETURN_IF_ERROR(CheckPeer(op, name_, rank_, size_, peer, tag));
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Pending p;
  RETURN_IF_ERROR(PostSend(p, op, data, bytes, peer, tag));
  return Wait(p, op, deadline);
}

absl::Status MpiCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  constexpr absl::string_view op = "Recv";
  RETURN_IF_ERROR(CheckUsable(op));
  RETURN_IF_ERROR(CheckPeer(op, name_, rank_, size_, peer, tag));
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Pending p;
  RETURN_IF_ERROR(PostRecv(p, op, data, bytes, peer, tag));
  return Wait(p, op, deadline);
}

absl::Status MpiCommunicator::Broadcast(void* data, size_t bytes, int root) {
  constexpr absl::string_view op = "Broadcast";
  RETURN_IF_ERROR(CheckUsable(op));
  RETURN_IF_ERROR(CheckRoot(op, name_, size_, root));
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Pending p;
  if (rank_ == root) {
    for (int i = 1; i < size_; ++i) {
      RETURN_IF_ERROR(PostSend(p, op, data, bytes, (rank_ + i) % size_, kTagBroadcast));
    }
  } else {
    RETURN_IF_ERROR(PostRecv(p, op, data, bytes, root, kTagBroadcast));
  }
  return Wait(p, op, deadline);
}

absl::Status MpiCommunicator::Gather(const void* send, size_t bytes, void* recv, int root) {
  constexpr absl::string_view op = "Gather";
  RETURN_IF_ERROR(CheckUsable(op));
  RETURN_IF_ERROR(CheckRoot(op, name_, size_, root));
  const absl::Time deadline = SteadyNow() + options_.timeout;
  Pending p;
  if (rank_ == root) {
    char* r = static_cast<char*>(recv);
    for (int i = 1; i < size_; ++i) {
      const int peer = (rank_ + i) % size_;
      RETURN_IF_ERROR(PostRecv(p, op, r + peer * bytes, bytes, peer, kTagGather));
    }
    if (bytes > 0) std::memcpy(r + rank_ * bytes, send, bytes);
  } else {
    RETURN_IF_ERROR(PostSend(p, op, send, bytes, root, kTagGather));
  }
  return Wait(p, op, deadline);
}

absl::Status MpiCommunicator::Barrier() { return BarrierImpl("Barrier"); }

absl::StatusOr<std::unique_ptr<SharedSegment>> MpiCommunicator::AllocateShared(
    size_t bytes_per_rank) {
  constexpr absl::string_view op = "AllocateShared";
  std::unique_ptr<SharedSegment> none;
  if (!options_.shared_memory || size_ == 1) return none;
  RETURN_IF_ERROR(BarrierImpl(op));
  {
    MPI_Comm node = MPI_COMM_NULL;
    SY_MPI_CALL(op, MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    int node_size = 0;
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    if (node_size != size_) return none;  // the same answer on every rank
  }
  // Every rank must ask for the same block: different layouts would read each other's
  // blocks at different offsets.
  {
    const uint64_t want = bytes_per_rank;
    std::vector<uint64_t> asked(size_);
    RETURN_IF_ERROR(AllToAll(std::vector<uint64_t>(size_, want).data(), asked.data(),
                             sizeof(uint64_t)));
    for (int r = 0; r < size_; ++r) {
      if (asked[r] != asked[0]) {
        return absl::InvalidArgumentError(absl::StrCat(
            op, " on group ", name_, ": rank 0 asks for ", asked[0], " bytes per rank, rank ", r,
            " for ", asked[r], " (the ranks' layouts differ)"));
      }
    }
  }
  // The name travels from rank 0 with whether it could create the mapping. It carries a
  // random part, so jobs whose rank 0 have the same pid (containers sharing /dev/shm) or a
  // name left behind by a killed job do not collide.
  struct {
    char name[64] = {};
    int32_t ok = 0;
  } made;
  const size_t bytes = HostSharedSegment::MappingBytes(size_, bytes_per_rank);
  std::optional<HostMapping> mapping;
  absl::Status local;
  if (rank_ == 0) {
    std::random_device random;
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::snprintf(made.name, sizeof(made.name), "/switchyard-%d-%08x",
                    static_cast<int>(getpid()), static_cast<unsigned>(random()));
      absl::StatusOr<HostMapping> m = HostMapping::Create(made.name, bytes);
      if (m.ok()) {
        mapping.emplace(*std::move(m));
        made.ok = 1;
        break;
      }
      local = m.status();
      if (!absl::IsAlreadyExists(local)) break;
    }
  }
  RETURN_IF_ERROR(Broadcast(&made, sizeof(made), 0));
  if (rank_ != 0 && made.ok) {
    absl::StatusOr<HostMapping> m = HostMapping::Open(made.name, bytes);
    if (m.ok()) {
      mapping.emplace(*std::move(m));
    } else {
      local = m.status();
    }
  }
  std::vector<char> mine(size_, mapping.has_value() ? 1 : 0), all(size_);
  RETURN_IF_ERROR(AllToAll(mine.data(), all.data(), 1));
  if (mapping.has_value()) mapping->Unlink();  // every rank has it open, or nobody uses it
  if (std::find(all.begin(), all.end(), 0) != all.end()) {
    if (!local.ok()) {
      spdlog::warn("group {} uses MPI instead of shared memory: {}", name_, local.message());
    }
    return none;
  }
  return std::unique_ptr<SharedSegment>(new HostSharedSegment(
      *std::move(mapping), rank_, size_, bytes_per_rank,
      SegmentPeers{.group = name_, .world_ranks = world_ranks_, .timeout = options_.timeout}));
}

// Rank 0 collects an empty message from every rank, then sends one back to each. A rank that
// has not arrived is named by rank 0; the others can only name rank 0.
absl::Status MpiCommunicator::BarrierImpl(absl::string_view op) {
  RETURN_IF_ERROR(CheckUsable(op));
  const absl::Time deadline = SteadyNow() + options_.timeout;
  char token = 0;
  if (rank_ == 0) {
    {
      Pending up;
      for (int peer = 1; peer < size_; ++peer) {
        RETURN_IF_ERROR(PostRecv(up, op, &token, 0, peer, kTagBarrierUp));
      }
      RETURN_IF_ERROR(Wait(up, op, deadline));
    }
    Pending down;
    for (int peer = 1; peer < size_; ++peer) {
      RETURN_IF_ERROR(PostSend(down, op, &token, 0, peer, kTagBarrierDown));
    }
    return Wait(down, op, deadline);
  }
  Pending p;
  RETURN_IF_ERROR(PostRecv(p, op, &token, 0, 0, kTagBarrierDown));
  RETURN_IF_ERROR(PostSend(p, op, &token, 0, 0, kTagBarrierUp));
  return Wait(p, op, deadline);
}

int WorldRank() {
  int initialized = 0, finalized = 0, rank = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int WorldSize() {
  int initialized = 0, finalized = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Init(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return absl::FailedPreconditionError("MPI has already been finalized");
  if (initialized) return std::unique_ptr<MpiRuntime>(new MpiRuntime(/*owns=*/false));
  int provided = MPI_THREAD_SINGLE;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("MPI_Init_thread failed: ", MpiErrorString(rc), " [",
                                               ShortFile(__FILE__), ":", __LINE__, "]"));
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    return absl::FailedPreconditionError(absl::StrCat("MPI provides thread level ", provided,
                                                      "; Switchyard needs MPI_THREAD_SERIALIZED (",
                                                      MPI_THREAD_SERIALIZED, ")"));
  }
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(/*owns=*/true));
}

MpiRuntime::~MpiRuntime() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void AbortJob(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

#undef SY_MPI_CALL

}  // namespace switchyard
