// A device-memory Communicator that moves data through pinned host buffers and a host
// communicator (MPI): device -> host copy, the host operation, host -> device copy, all on
// one CUDA stream. It runs the whole device path wherever the host transport does, in
// particular several ranks sharing one GPU (which NCCL before 2.30 refuses), at the cost of
// two copies per transfer. Selected with --device-comm staged.
//
//   StagedCommunicator ep(&mpi_ep_group, stream);   // `stream`: the compute stream
//   RETURN_IF_ERROR(ep.AllToAllV(d_send, counts, offsets, d_recv, rcounts, roffsets));
//
// Semantics beyond communicator.h:
// - Buffers are device memory. Work enqueued on `stream` before a call is complete before its
//   data leaves; the receive buffer is complete when the call returns (the stream is
//   synchronised, against the host communicator's deadline).
// - Deadlines and failures are the host communicator's (kDeadlineExceeded naming the peer);
//   a CUDA error gives kInternal naming the copy. After either, every call fails.
// - The staging buffers grow to the largest transfer seen and are reused.
// - Not thread-safe: one thread drives a communicator.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace switchyard {

class StagedCommunicator final : public Communicator {
 public:
  // `host` (its group and order) and `stream` must outlive this object. `deadline` bounds
  // each wait on the stream.
  StagedCommunicator(Communicator* host, cudaStream_t stream,
                     absl::Duration deadline = absl::Seconds(60));
  ~StagedCommunicator() override;
  StagedCommunicator(const StagedCommunicator&) = delete;
  StagedCommunicator& operator=(const StagedCommunicator&) = delete;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::string& name() const override { return name_; }

  absl::Status AllToAllV(const void* send, std::span<const size_t> send_counts,
                         std::span<const size_t> send_offsets, void* recv,
                         std::span<const size_t> recv_counts,
                         std::span<const size_t> recv_offsets) override;
  absl::Status AllToAll(const void* send, void* recv, size_t bytes) override;
  absl::Status Send(const void* data, size_t bytes, int peer, int tag) override;
  absl::Status Recv(void* data, size_t bytes, int peer, int tag) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Gather(const void* send, size_t bytes, void* recv, int root) override;
  absl::Status Barrier() override { return host_->Barrier(); }

 private:
  struct Pinned {
    void* data = nullptr;
    size_t bytes = 0;
  };
  absl::Status Reserve(Pinned* b, size_t bytes);
  // Copies [offset, offset + bytes) blocks between device and host on the stream.
  absl::Status ToHost(void* host, const void* device, size_t bytes);
  absl::Status ToDevice(void* device, const void* host, size_t bytes);
  // Waits for the stream, polling against the deadline.
  absl::Status Drain(const char* what);
  absl::Status Fail(absl::Status st);

  Communicator* host_;
  cudaStream_t stream_;
  absl::Duration deadline_;
  std::string name_;
  Pinned send_, recv_;
  absl::Status broken_;
};

}  // namespace switchyard
