#include "comm/metered_communicator.h"

#include "common/steady_time.h"

namespace switchyard {
namespace {

class MeteredSegment final : public SharedSegment {
 public:
  MeteredSegment(std::unique_ptr<SharedSegment> inner, CommMeter* meter)
      : inner_(std::move(inner)), meter_(meter) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  size_t bytes_per_rank() const override { return inner_->bytes_per_rank(); }
  char* base(int rank) override { return inner_->base(rank); }
  void Post(int slot, uint64_t value) override { inner_->Post(slot, value); }
  absl::Status WaitAll(int slot, uint64_t value, absl::string_view op) override {
    AddElapsedNanos t(&meter_->wait_ns);
    return inner_->WaitAll(slot, value, op);
  }
  void CountRead(int peer, size_t bytes) override {
    if (peer != rank()) meter_->sent_bytes[peer] += bytes;
    inner_->CountRead(peer, bytes);
  }

 private:
  std::unique_ptr<SharedSegment> inner_;
  CommMeter* meter_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SharedSegment>> MeteredCommunicator::AllocateShared(
    size_t bytes_per_rank) {
  absl::StatusOr<std::unique_ptr<SharedSegment>> seg;
  {
    AddElapsedNanos t(&meter_.wait_ns);
    seg = inner_->AllocateShared(bytes_per_rank);
  }
  if (!seg.ok() || *seg == nullptr) return seg;
  return std::unique_ptr<SharedSegment>(new MeteredSegment(*std::move(seg), &meter_));
}

MeteredCommunicator::MeteredCommunicator(Communicator* inner) : inner_(inner) {
  meter_.sent_bytes.assign(inner_->size(), 0);
}

void MeteredCommunicator::CountSends(std::span<const size_t> send_counts) {
  for (int peer = 0; peer < size(); ++peer) {
    if (peer != rank()) meter_.sent_bytes[peer] += send_counts[peer];
  }
}

void MeteredCommunicator::CountToEveryPeer(size_t bytes) {
  for (int peer = 0; peer < size(); ++peer) {
    if (peer != rank()) meter_.sent_bytes[peer] += bytes;
  }
}

absl::Status MeteredCommunicator::AllToAllV(const void* send, std::span<const size_t> send_counts,
                                            std::span<const size_t> send_offsets, void* recv,
                                            std::span<const size_t> recv_counts,
                                            std::span<const size_t> recv_offsets) {
  CountSends(send_counts);
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->AllToAllV(send, send_counts, send_offsets, recv, recv_counts, recv_offsets);
}

absl::Status MeteredCommunicator::AllToAllVFilled(const std::function<void(int peer)>& fill,
                                                  const void* send,
                                                  std::span<const size_t> send_counts,
                                                  std::span<const size_t> send_offsets, void* recv,
                                                  std::span<const size_t> recv_counts,
                                                  std::span<const size_t> recv_offsets) {
  CountSends(send_counts);
  // Packing the rows is the caller's compute, not waiting: its time is taken back out.
  int64_t filling_ns = 0;
  const std::function<void(int)> timed_fill = [&fill, &filling_ns](int peer) {
    AddElapsedNanos t(&filling_ns);
    fill(peer);
  };
  absl::Status st;
  {
    AddElapsedNanos t(&meter_.wait_ns);
    st = inner_->AllToAllVFilled(timed_fill, send, send_counts, send_offsets, recv, recv_counts,
                                 recv_offsets);
  }
  meter_.wait_ns -= filling_ns;
  return st;
}

absl::Status MeteredCommunicator::AllToAll(const void* send, void* recv, size_t bytes) {
  CountToEveryPeer(bytes);
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->AllToAll(send, recv, bytes);
}

absl::Status MeteredCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  if (peer >= 0 && peer < size() && peer != rank()) meter_.sent_bytes[peer] += bytes;
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->Send(data, bytes, peer, tag);
}

absl::Status MeteredCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->Recv(data, bytes, peer, tag);
}

absl::Status MeteredCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (rank() == root) CountToEveryPeer(bytes);
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->Broadcast(data, bytes, root);
}

absl::Status MeteredCommunicator::Gather(const void* send, size_t bytes, void* recv, int root) {
  if (rank() != root && root >= 0 && root < size()) meter_.sent_bytes[root] += bytes;
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->Gather(send, bytes, recv, root);
}

absl::Status MeteredCommunicator::Barrier() {
  AddElapsedNanos t(&meter_.wait_ns);
  return inner_->Barrier();
}

}  // namespace switchyard
