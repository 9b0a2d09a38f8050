// The MPI backend of Communicator: host memory, any number of ranks, launched with mpirun.
//
//   ASSIGN_OR_RETURN(auto mpi, MpiRuntime::Init(&argc, &argv));    // main(), once
//   auto world = MpiCommunicator::World({.timeout = absl::Seconds(60)});
//   ASSIGN_OR_RETURN(auto ep, world->Split(stage, ep_rank, absl::StrCat("ep(stage ", stage, ")")));
//   RETURN_IF_ERROR(ep->AllToAllV(...));
//
// Every operation is built from non-blocking point-to-point primitives and a polling wait
// bounded by CommOptions::timeout, so a rank that does not take part is reported by name
// (group rank and world rank) instead of hanging the job. The wait spins briefly and then
// sleeps with exponential backoff (20 us .. 1 ms), so ranks oversubscribed on few cores do not
// starve each other.
//
// Semantics beyond communicator.h:
// - Point-to-point tags must lie in [0, kMaxUserTag]; larger tags carry collective traffic.
// - A send completes as soon as MPI has taken the data; small messages (MPI's eager limit,
//   a few KiB) are buffered by the receiver, so a sender does not notice that its peer is
//   absent. Absence is always detected by whoever waits for data from the absent rank (e.g.
//   in Broadcast the receivers, in Gather the root).
// - After kDeadlineExceeded or kUnavailable the communicator is unusable: every later call
//   returns kFailedPrecondition. Receives still pending are cancelled; sends still pending are
//   released to MPI, which may still read their buffers until the peer matches them, so the
//   caller should fail the job rather than reuse those buffers for long.
// - Invalid arguments (wrong span sizes, peer/root/tag out of range) give kInvalidArgument
//   before anything is sent and leave the communicator usable.
// - Transfers larger than max_message_bytes() (default 1 GiB, below INT_MAX) are split into
//   several MPI messages, matched in order by MPI's non-overtaking rule.
// - A count disagreement between sender and receiver gives kUnavailable (MPI truncation) when
//   the message is longer than expected and kInternal when shorter; both break the group.
// - The deadline of an operation is checked whenever a poll finds nothing new: a transfer
//   that keeps completing messages is never cut off, a silent peer is after `timeout`.
// - Not thread-safe: one thread drives a communicator. MPI is initialised with
//   MPI_THREAD_SERIALIZED, so that thread need not be main, but all MPI use in the process
//   (every MpiCommunicator) must be serialised.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace switchyard {

// Largest tag allowed in MpiCommunicator::Send/Recv; tags above it are reserved.
inline constexpr int kMaxUserTag = 999;

class MpiCommunicator final : public Communicator {
 public:
  // A duplicate of MPI_COMM_WORLD named "world". Requires MPI to be initialised (MpiRuntime).
  // MPI_Comm_dup runs under MPI_COMM_WORLD's error handler (by default fatal to the job).
  static std::unique_ptr<MpiCommunicator> World(const CommOptions& options);

  // Collective over this communicator (like MPI_Comm_split): ranks passing the same color
  // form a new group named `name`, ordered by `key` (ties by rank here). A negative color
  // means "in no group": the call succeeds with a null pointer. The new communicator has
  // this one's options, or `options` in the second form. A deadline-bounded barrier runs
  // first, so a rank that never calls Split is reported rather than hanging in MPI.
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> Split(int color, int key, std::string name);
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> Split(int color, int key, std::string name,
                                                         const CommOptions& options);

  // Frees the MPI communicator (local in Open MPI; skipped after MPI_Finalize).
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  // The MPI_COMM_WORLD rank of group rank `group_rank`.
  int world_rank(int group_rank) const { return world_ranks_[group_rank]; }
  const CommOptions& options() const { return options_; }
  // True after a deadline or transport failure; every later call fails.
  bool broken() const { return broken_; }

  // Largest single MPI message; bigger transfers are chunked. Must be in [1, INT_MAX] and
  // equal on all ranks. Tests lower it to exercise chunking without multi-GiB buffers.
  size_t max_message_bytes() const { return max_message_bytes_; }
  void set_max_message_bytes(size_t bytes);

  absl::Status AllToAllV(const void* send, std::span<const size_t> send_counts,
                         std::span<const size_t> send_offsets, void* recv,
                         std::span<const size_t> recv_counts,
                         std::span<const size_t> recv_offsets) override;
  absl::Status AllToAllVFilled(const std::function<void(int peer)>& fill, const void* send,
                               std::span<const size_t> send_counts,
                               std::span<const size_t> send_offsets, void* recv,
                               std::span<const size_t> recv_counts,
                               std::span<const size_t> recv_offsets) override;
  absl::Status AllToAll(const void* send, void* recv, size_t bytes) override;
  absl::Status Send(const void* data, size_t bytes, int peer, int tag) override;
  absl::Status Recv(void* data, size_t bytes, int peer, int tag) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Gather(const void* send, size_t bytes, void* recv, int root) override;
  absl::Status Barrier() override;
  // A HostSharedSegment (comm/host_shared_segment.h) when options().shared_memory and every
  // rank of the group is on this host (MPI_COMM_TYPE_SHARED); null otherwise, or on every
  // rank when any rank cannot map it. options().shared_memory must be the same on every rank
  // (it comes from the job's flags), and so must bytes_per_rank (kInvalidArgument on every
  // rank otherwise). Rank 0 creates the mapping and removes its name once every rank has it
  // open. Every step has the group's deadline except MPI_Comm_split_type, which runs right
  // after a barrier that has one.
  absl::StatusOr<std::unique_ptr<SharedSegment>> AllocateShared(size_t bytes_per_rank) override;

 private:
  struct Pending;  // requests of one operation in flight (mpi_communicator.cc)

  // Takes ownership of `comm` and sets MPI_ERRORS_RETURN on it.
  MpiCommunicator(MPI_Comm comm, std::string name, const CommOptions& options);

  absl::Status CheckUsable(absl::string_view op) const;
  // Marks the communicator unusable and passes `status` through.
  absl::Status Fail(absl::Status status);
  absl::Status MpiError(int code, absl::string_view call, absl::string_view op, const char* file,
                        int line);
  absl::Status PostRecv(Pending& p, absl::string_view op, void* data, size_t bytes, int peer,
                        int tag);
  absl::Status PostSend(Pending& p, absl::string_view op, const void* data, size_t bytes, int peer,
                        int tag);
  // Polls until every request of `p` completes or `deadline` passes.
  absl::Status Wait(Pending& p, absl::string_view op, absl::Time deadline);
  absl::Status DeadlineError(const Pending& p, absl::string_view op);
  absl::Status AllToAllVImpl(absl::string_view op, const void* send,
                             std::span<const size_t> send_counts,
                             std::span<const size_t> send_offsets, void* recv,
                             std::span<const size_t> recv_counts,
                             std::span<const size_t> recv_offsets,
                             const std::function<void(int peer)>* fill = nullptr);
  absl::Status BarrierImpl(absl::string_view op);
  std::string Ranks(const std::vector<int>& group_ranks) const;

  MPI_Comm comm_;
  std::string name_;
  CommOptions options_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> world_ranks_;
  size_t max_message_bytes_ = size_t{1} << 30;
  bool broken_ = false;
};

// This process's rank in / the size of MPI_COMM_WORLD; 0 / 1 when MPI is not initialised.
int WorldRank();
int WorldSize();

// Owns MPI initialisation for a binary's main(). MPI lives as long as this object.
class MpiRuntime {
 public:
  // MPI_Init_thread with MPI_THREAD_SERIALIZED (a thread other than main, the coordinator's
  // scheduler, drives MPI). Fails (after finalizing) when the library provides less. When MPI
  // is already initialised (e.g. by a test main) it does nothing and the destructor will not
  // finalize either.
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Init(int* argc, char*** argv);
  // MPI_Finalize, if Init initialised MPI. Every MpiCommunicator should be destroyed first.
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  bool owns_mpi() const { return owns_; }

 private:
  explicit MpiRuntime(bool owns) : owns_(owns) {}
  bool owns_;
};

// MPI_Abort on MPI_COMM_WORLD with `code`: kills every rank of the job. Only for the binary's
// top level after a fatal communication error, so that peers do not wait out their deadlines
// and MPI_Finalize does not block on a dead rank. Returns only if MPI is not running.
void AbortJob(int code);

}  // namespace switchyard
