// The NCCL backend of Communicator: buffers are device memory, one GPU per rank.
//
//   ASSIGN_OR_RETURN(int device, SelectCudaDevice());            // before any CUDA work
//   auto world = MpiCommunicator::World({.timeout = absl::Seconds(60)});
//   ASSIGN_OR_RETURN(auto nccl, NcclCommunicator::Create(world.get(), {.name = "world"}));
//   ASSIGN_OR_RETURN(auto ep, nccl->Split(stage, ep_rank, "ep(stage 0)"));
//   RETURN_IF_ERROR(ep->AllToAllV(d_send, counts, offsets, d_recv, rcounts, roffsets));
//
// Semantics beyond communicator.h:
// - Bootstrap: rank 0 of the host bootstrap communicator (e.g. MPI) creates the NCCL unique id
//   and broadcasts it; every rank then joins with ncclCommInitRankConfig in non-blocking mode
//   (config.blocking = 0) on the CUDA device current at Create.
// - Every operation is enqueued on the communicator's stream and then waited for: the wait
//   polls cudaStreamQuery and ncclCommGetAsyncError until the work is done, an error shows or
//   the deadline (CommOptions::timeout) passes. On error or timeout it calls ncclCommAbort and
//   returns kUnavailable / kDeadlineExceeded naming the operation and the group (and the peer,
//   for Send/Recv: NCCL cannot say which peer of a collective is missing). After that the
//   communicator is unusable: every later call returns kFailedPrecondition.
// - Ordering with compute: operations run on stream() (the one given in NcclOptions, or one
//   the communicator creates). Producers of a send buffer on another stream must be complete
//   (or ordered before stream() with an event) before the call; the receive buffer is complete
//   when the call returns OK.
// - Send/Recv: NCCL point-to-point has no tags; messages between a pair match in issue order.
//   `tag` is checked to be non-negative and otherwise ignored. Send and Recv block until the
//   transfer completes (NCCL transfers are rendezvous: the peer must post the matching call).
// - AllToAllV/AllToAll/Gather are grouped ncclSend/ncclRecv (ncclGroupStart/End), Broadcast is
//   ncclBroadcast (in place), Barrier an all-reduce of one int.
// - Invalid arguments (span sizes, peer/root out of range) give kInvalidArgument before anything
//   is enqueued and leave the communicator usable.
// - Not thread-safe: one thread drives a communicator.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/cuda_device.h"  // SelectCudaDevice

namespace switchyard {

struct NcclOptions {
  std::string name = "nccl";  // the group's name in errors
  CommOptions comm;           // the deadline of every wait
  // The stream operations run on; null: the communicator creates a non-blocking one.
  cudaStream_t stream = nullptr;
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`'s group (a host communicator, used only here for one
  // Broadcast of the unique id): the NCCL group has the same ranks in the same order.
  // Errors: the bootstrap's (kDeadlineExceeded, ...); kUnavailable when NCCL fails to
  // initialise; kDeadlineExceeded when initialisation does not finish in time.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(Communicator* bootstrap,
                                                                  const NcclOptions& options);

  // Finalizes (bounded by the timeout, then aborts) and destroys the NCCL communicator.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // Collective over this communicator (ncclCommSplit): ranks passing the same color form a new
  // group named `name`, ordered by `key`. A negative color means "in no group": the call
  // succeeds with a null pointer. The child has this communicator's options (and stream
  // policy: the same external stream, or its own).
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> Split(int color, int key,
                                                          const std::string& name);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  cudaStream_t stream() const { return stream_; }
  ncclComm_t comm() const { return comm_; }
  bool broken() const { return broken_; }

  absl::Status AllToAllV(const void* send, std::span<const size_t> send_counts,
                         std::span<const size_t> send_offsets, void* recv,
                         std::span<const size_t> recv_counts,
                         std::span<const size_t> recv_offsets) override;
  absl::Status AllToAll(const void* send, void* recv, size_t bytes) override;
  absl::Status Send(const void* data, size_t bytes, int peer, int tag) override;
  absl::Status Recv(void* data, size_t bytes, int peer, int tag) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Gather(const void* send, size_t bytes, void* recv, int root) override;
  absl::Status Barrier() override;

 private:
  NcclCommunicator(std::string name, const CommOptions& options, cudaStream_t external_stream);
  // Creates the stream (unless external) and the barrier word.
  absl::Status InitResources();
  // Takes `comm` (possibly still initialising), waits for it and reads rank/size.
  absl::Status Adopt(ncclComm_t comm, absl::string_view op);

  absl::Status CheckUsable(absl::string_view op) const;
  // CheckUsable, then a peer in [0, size) and a tag >= 0.
  absl::Status CheckPointToPoint(absl::string_view op, int peer, int tag) const;
  // Aborts the NCCL communicator, marks this one unusable and returns `status`.
  absl::Status Fail(absl::Status status);
  // Checks the result of an enqueueing call (ncclSuccess or ncclInProgress are fine).
  absl::Status Enqueued(ncclResult_t r, absl::string_view op, absl::string_view call);
  // Waits for NCCL to finish enqueueing and the stream to drain; `peer` >= 0 names the peer.
  absl::Status Wait(absl::string_view op, int peer = -1);
  // Waits until `comm` leaves ncclInProgress (initialisation, split, finalize).
  absl::Status WaitReady(ncclComm_t comm, absl::string_view op);
  std::string Describe(absl::string_view op, int peer) const;

  std::string name_;
  CommOptions options_;
  cudaStream_t external_stream_ = nullptr;  // not owned
  cudaStream_t stream_ = nullptr;           // external_stream_ or owned
  ncclComm_t comm_ = nullptr;
  int* barrier_word_ = nullptr;  // device
  int rank_ = 0;
  int size_ = 1;
  bool broken_ = false;
};

}  // namespace switchyard
