// Communication among the ranks of a group: the one seam between Switchyard's distributed
// logic and a transport. Backends: MPI on host memory (comm/mpi_communicator.h) and NCCL on
// device memory (comm/nccl_communicator.h). Tests substitute their own.
//
//   std::vector<size_t> send_counts(comm.size()), recv_counts(comm.size());
//   ...
//   RETURN_IF_ERROR(comm.AllToAllV(send, send_counts, send_offsets,
//                                  recv, recv_counts, recv_offsets));
//
// Contract for every operation:
// - Counts and offsets are in bytes; buffers must not overlap.
// - It is collective where it says so: every rank of the group calls it, in the same order.
// - Every wait has a deadline (CommOptions::timeout). A peer that does not take part in time
//   gives kDeadlineExceeded whose message names the operation, the group and the peer(s)
//   still missing; a transport failure gives kUnavailable. After either, the communicator is
//   unusable: the caller must fail the job (the launcher restarts it), never retry.
// - Not thread-safe: one thread drives a communicator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <functional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace switchyard {

struct CommOptions {
  absl::Duration timeout = absl::Seconds(60);  // flag: --comm-timeout
  // Whether a group whose ranks share one host may hand out shared memory (AllocateShared),
  // which the expert dispatcher uses instead of its all-to-alls. Flag: --no-shared-memory.
  bool shared_memory = true;
};

// Memory that every rank of a group maps (ranks on one host), with one flag word per slot and
// rank for the ranks to say how far they got. Rank r's block is base(r), bytes_per_rank()
// bytes, 64-byte aligned, readable and writable by every rank. Flags only grow.
//
//   seg->Post(kPosted, step);                        // after writing this rank's block
//   RETURN_IF_ERROR(seg->WaitAll(kPosted, step, "Dispatch"));  // every peer's block is ready
//   read(seg->base(peer));
//
// Post is a release store and WaitAll acquires every flag it sees, so what a rank wrote to
// any block before its Post is visible to a rank whose WaitAll returned.
class SharedSegment {
 public:
  static constexpr int kSlots = 4;
  virtual ~SharedSegment() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual size_t bytes_per_rank() const = 0;
  virtual char* base(int rank) = 0;
  virtual void Post(int slot, uint64_t value) = 0;
  // Waits until flag `slot` of every other rank is at least `value`, against the group's
  // deadline: kDeadlineExceeded naming `op`, the group and the ranks still behind; the job's
  // declared failure (comm/job_failure.h) as soon as there is one. After an error the segment
  // is unusable, like its communicator.
  virtual absl::Status WaitAll(int slot, uint64_t value, absl::string_view op) = 0;
  // Bytes that `peer` reads from this rank's block (for a metered group's traffic matrix).
  virtual void CountRead(int peer, size_t bytes) { (void)peer, (void)bytes; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // rank within this group
  virtual int size() const = 0;
  // The group's name in error messages, e.g. "ep(stage 1)".
  virtual const std::string& name() const = 0;

  // Collective. Sends send[send_offsets[r] .. + send_counts[r]) to rank r and receives
  // recv_counts[r] bytes from rank r at recv + recv_offsets[r]. Counts may be zero; the
  // receiver must know its counts (exchange them first with AllToAll).
  virtual absl::Status AllToAllV(const void* send, std::span<const size_t> send_counts,
                                 std::span<const size_t> send_offsets, void* recv,
                                 std::span<const size_t> recv_counts,
                                 std::span<const size_t> recv_offsets) = 0;

  // AllToAllV whose send blocks are written just in time: fill(peer) is called once for every
  // other peer with a non-empty block, right before that block is sent and after every
  // receive is posted, so writing the next block overlaps the transfers already started (the
  // caller packs rows per destination in `fill`). The block to itself is not filled and must
  // be empty. The default fills every block, then calls AllToAllV.
  virtual absl::Status AllToAllVFilled(const std::function<void(int peer)>& fill,
                                       const void* send, std::span<const size_t> send_counts,
                                       std::span<const size_t> send_offsets, void* recv,
                                       std::span<const size_t> recv_counts,
                                       std::span<const size_t> recv_offsets) {
    for (int peer = 0; peer < size(); ++peer) {
      if (peer != rank() && send_counts[peer] > 0) fill(peer);
    }
    return AllToAllV(send, send_counts, send_offsets, recv, recv_counts, recv_offsets);
  }

  // Collective. Each rank sends `bytes` bytes to every rank: block r of send goes to rank r,
  // block r of recv comes from rank r.
  virtual absl::Status AllToAll(const void* send, void* recv, size_t bytes) = 0;

  // Point-to-point, blocking until complete. `tag` distinguishes independent streams.
  virtual absl::Status Send(const void* data, size_t bytes, int peer, int tag) = 0;
  virtual absl::Status Recv(void* data, size_t bytes, int peer, int tag) = 0;

  // Collective. Root's `bytes` bytes are copied to every rank's `data`.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;

  // Collective. Every rank contributes `bytes`; root receives size() blocks in rank order.
  virtual absl::Status Gather(const void* send, size_t bytes, void* recv, int root) = 0;

  // Collective.
  virtual absl::Status Barrier() = 0;

  // Collective. A SharedSegment of `bytes_per_rank` per rank when every rank of the group is
  // on this host and the options allow it; null (not an error) when not, or when the host
  // cannot back it (then every rank gets null). The default has none.
  virtual absl::StatusOr<std::unique_ptr<SharedSegment>> AllocateShared(size_t bytes_per_rank) {
    (void)bytes_per_rank;
    return std::unique_ptr<SharedSegment>();
  }
};

}  // namespace switchyard
