// The group of one rank: the single-process case of every collective (a rank's block to
// itself is copied, nothing else happens). Lets one-process executors run the same
// orchestration as distributed ones without a transport.
//
//   SelfCommunicator self("self");
//   DistributedWorker worker(weights, {.ep = 1, .pp = 1}, &self, &self, routing, kv, limits);
#pragma once

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "comm/communicator.h"

namespace switchyard {

class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(std::string name = "self") : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }

  absl::Status AllToAllV(const void* send, std::span<const size_t> send_counts,
                         std::span<const size_t> send_offsets, void* recv,
                         std::span<const size_t> recv_counts,
                         std::span<const size_t> recv_offsets) override {
    if (send_counts[0] != recv_counts[0]) {
      return absl::InvalidArgumentError("AllToAllV on " + name_ +
                                        ": send and receive counts of rank 0 differ");
    }
    Copy(static_cast<char*>(recv) + recv_offsets[0],
         static_cast<const char*>(send) + send_offsets[0], send_counts[0]);
    return absl::OkStatus();
  }
  absl::Status AllToAll(const void* send, void* recv, size_t bytes) override {
    Copy(recv, send, bytes);
    return absl::OkStatus();
  }
  absl::Status Send(const void*, size_t, int peer, int) override { return NoPeer(peer); }
  absl::Status Recv(void*, size_t, int peer, int) override { return NoPeer(peer); }
  absl::Status Broadcast(void*, size_t, int) override { return absl::OkStatus(); }
  absl::Status Gather(const void* send, size_t bytes, void* recv, int) override {
    Copy(recv, send, bytes);
    return absl::OkStatus();
  }
  absl::Status Barrier() override { return absl::OkStatus(); }

 private:
  static void Copy(void* dst, const void* src, size_t bytes) {
    if (bytes > 0 && dst != src) std::memcpy(dst, src, bytes);
  }
  absl::Status NoPeer(int peer) const {
    return absl::FailedPreconditionError("rank " + std::to_string(peer) + " is not in " + name_ +
                                         ", a group of one rank");
  }
  std::string name_;
};

}  // namespace switchyard
