// The SharedSegment of ranks on one host: one POSIX shared-memory mapping, a block per rank
// (a 256-byte header of flag words, one per slot on its own cache line, then the payload).
// MpiCommunicator::AllocateShared creates it; tests build it directly.
//
//   ASSIGN_OR_RETURN(HostMapping m, HostMapping::Create(name, total_bytes));   // one rank
//   ASSIGN_OR_RETURN(HostMapping m, HostMapping::Open(name, total_bytes));     // the others
//   HostSharedSegment seg(std::move(m), rank, size, bytes_per_rank, {...});
//
// Waits poll the peers' flags as the MPI waits poll their requests (comm/poll_backoff.h); the
// deadline and the job's declared failure are checked on every idle poll.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace switchyard {

// A shared mapping of a named POSIX shared-memory object. Unmapped on destruction; the name
// is removed by Unlink (once every rank has it open) or on destruction of a creator that did
// not unlink.
class HostMapping {
 public:
  // Creates `name` (for example "/switchyard-4711-5f3a09c2") and reserves its bytes, so a host
  // short of shared memory fails here (kResourceExhausted) rather than with SIGBUS on first
  // touch; kAlreadyExists when the name is taken.
  static absl::StatusOr<HostMapping> Create(const std::string& name, size_t bytes);
  static absl::StatusOr<HostMapping> Open(const std::string& name, size_t bytes);
  HostMapping(HostMapping&& other) noexcept;
  HostMapping& operator=(HostMapping&& other) noexcept;
  HostMapping(const HostMapping&) = delete;
  HostMapping& operator=(const HostMapping&) = delete;
  ~HostMapping();

  char* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  void Unlink();

 private:
  HostMapping() = default;
  void Reset();  // unmaps, and removes the name if this one still owns it
  char* data_ = nullptr;
  size_t bytes_ = 0;
  std::string name_;
  bool owner_ = false;  // created it and has not unlinked it yet
};

struct SegmentPeers {
  std::string group;             // the group's name, for messages
  std::vector<int> world_ranks;  // [group rank]
  absl::Duration timeout = absl::Seconds(60);
};

class HostSharedSegment final : public SharedSegment {
 public:
  static constexpr size_t kHeaderBytes = 256;  // kSlots flags, 64 bytes apart
  // The mapping's bytes for `size` ranks of `bytes_per_rank` payload each.
  static size_t MappingBytes(int size, size_t bytes_per_rank);

  HostSharedSegment(HostMapping mapping, int rank, int size, size_t bytes_per_rank,
                    SegmentPeers peers);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  size_t bytes_per_rank() const override { return bytes_per_rank_; }
  char* base(int rank) override { return Block(rank) + kHeaderBytes; }
  void Post(int slot, uint64_t value) override;
  absl::Status WaitAll(int slot, uint64_t value, absl::string_view op) override;

 private:
  char* Block(int rank) const { return mapping_.data() + rank * stride_; }
  uint64_t* Flag(int rank, int slot) const {
    return reinterpret_cast<uint64_t*>(Block(rank) + 64 * slot);
  }

  HostMapping mapping_;
  int rank_, size_;
  size_t bytes_per_rank_, stride_;
  SegmentPeers peers_;
  bool broken_ = false;
};

}  // namespace switchyard
