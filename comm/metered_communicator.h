// A Communicator that forwards every operation to another and counts what passed: the time
// this rank spent inside the operations (waiting on its peers, transfers included) and the
// bytes it sent to each peer. The expert dispatcher's group is wrapped in one, so the cluster
// status and the metrics show, per rank, compute against waiting (the straggler is the rank
// the others wait for) and the rank x rank matrix of dispatched bytes, at no cost beyond two
// clock reads per operation.
//
//   MeteredCommunicator ep(ep_group);        // ep_group: borrowed, outlives `ep`
//   ExpertDispatcher dispatcher(&ep, ...);
//   ep.meter().wait_ns; ep.meter().sent_bytes[peer];
//
// Thread-safety: as the wrapped communicator (one thread drives it); meter() is read by the
// same thread (between steps).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"

namespace switchyard {

struct CommMeter {
  int64_t wait_ns = 0;               // time inside operations, on the steady clock
  std::vector<uint64_t> sent_bytes;  // [peer]: bytes sent to that group rank (0 to itself)
};

class MeteredCommunicator final : public Communicator {
 public:
  explicit MeteredCommunicator(Communicator* inner);

  const CommMeter& meter() const { return meter_; }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }

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
  // The inner group's segment, metered: its waits count as waiting, and CountRead(peer, n)
  // as n bytes sent to peer.
  absl::StatusOr<std::unique_ptr<SharedSegment>> AllocateShared(size_t bytes_per_rank) override;

 private:
  void CountSends(std::span<const size_t> send_counts);  // [peer] bytes, itself excluded
  void CountToEveryPeer(size_t bytes);                   // the same bytes to every other rank

  Communicator* inner_;
  CommMeter meter_;
};

}  // namespace switchyard
