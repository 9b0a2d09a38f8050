#include "comm/metered_communicator.h"

#include <chrono>

namespace switchyard {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Adds the time from construction to destruction to `*total`.
class Timed {
 public:
  explicit Timed(int64_t* total) : total_(total), start_(NowNs()) {}
  ~Timed() { *total_ += NowNs() - start_; }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  int64_t* total_;
  int64_t start_;
};

}  // namespace

MeteredCommunicator::MeteredCommunicator(Communicator* inner) : inner_(inner) {
  meter_.sent_bytes.assign(inner_->size(), 0);
}

void MeteredCommunicator::CountSends(std::span<const size_t> send_counts) {
  for (int peer = 0; peer < size(); ++peer) {
    if (peer != rank()) meter_.sent_bytes[peer] += send_counts[peer];
  }
}

absl::Status MeteredCommunicator::AllToAllV(const void* send, std::span<const size_t> send_counts,
                                            std::span<const size_t> send_offsets, void* recv,
                                            std::span<const size_t> recv_counts,
                                            std::span<const size_t> recv_offsets) {
  CountSends(send_counts);
  Timed t(&meter_.wait_ns);
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
    Timed t(&filling_ns);
    fill(peer);
  };
  absl::Status st;
  {
    Timed t(&meter_.wait_ns);
    st = inner_->AllToAllVFilled(timed_fill, send, send_counts, send_offsets, recv, recv_counts,
                                 recv_offsets);
  }
  meter_.wait_ns -= filling_ns;
  return st;
}

absl::Status MeteredCommunicator::AllToAll(const void* send, void* recv, size_t bytes) {
  for (int peer = 0; peer < size(); ++peer) {
    if (peer != rank()) meter_.sent_bytes[peer] += bytes;
  }
  Timed t(&meter_.wait_ns);
  return inner_->AllToAll(send, recv, bytes);
}

absl::Status MeteredCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  if (peer >= 0 && peer < size() && peer != rank()) meter_.sent_bytes[peer] += bytes;
  Timed t(&meter_.wait_ns);
  return inner_->Send(data, bytes, peer, tag);
}

absl::Status MeteredCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  Timed t(&meter_.wait_ns);
  return inner_->Recv(data, bytes, peer, tag);
}

absl::Status MeteredCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (rank() == root) {
    for (int peer = 0; peer < size(); ++peer) {
      if (peer != root) meter_.sent_bytes[peer] += bytes;
    }
  }
  Timed t(&meter_.wait_ns);
  return inner_->Broadcast(data, bytes, root);
}

absl::Status MeteredCommunicator::Gather(const void* send, size_t bytes, void* recv, int root) {
  if (rank() != root && root >= 0 && root < size()) meter_.sent_bytes[root] += bytes;
  Timed t(&meter_.wait_ns);
  return inner_->Gather(send, bytes, recv, root);
}

absl::Status MeteredCommunicator::Barrier() {
  Timed t(&meter_.wait_ns);
  return inner_->Barrier();
}

}  // namespace switchyard
