#include "comm/staged_communicator.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/cuda_device.h"
#include "common/status_macros.h"

namespace switchyard {

StagedCommunicator::StagedCommunicator(Communicator* host, cudaStream_t stream,
                                       absl::Duration deadline)
    : host_(host), stream_(stream), deadline_(deadline), name_(host->name() + "[staged]") {}

StagedCommunicator::~StagedCommunicator() {
  // Copies still queued may use the staging buffers; a failed or hung GPU is not waited for.
  if (stream_ != nullptr && broken_.ok()) (void)Drain("shutdown");
  for (Pinned* b : {&send_, &recv_}) {
    if (b->data != nullptr) cudaFreeHost(b->data);
  }
}

absl::Status StagedCommunicator::Fail(absl::Status st) {
  if (broken_.ok()) broken_ = st;
  return st;
}

absl::Status StagedCommunicator::Reserve(Pinned* b, size_t bytes) {
  if (bytes <= b->bytes) return absl::OkStatus();
  if (b->data != nullptr) {
    // The stream may still read or write the old buffer.
    RETURN_IF_ERROR(Drain("staging buffer reuse"));
    cudaFreeHost(b->data);
    b->data = nullptr;
    b->bytes = 0;
  }
  const size_t want = std::max(bytes, size_t{1} << 16);
  const cudaError_t err = cudaMallocHost(&b->data, want);
  if (err != cudaSuccess) {
    cudaGetLastError();
    b->data = nullptr;
    return Fail(absl::ResourceExhaustedError(absl::StrCat(
        name_, ": cudaMallocHost(", want, " bytes): ", cudaGetErrorString(err))));
  }
  b->bytes = want;
  return absl::OkStatus();
}

absl::Status StagedCommunicator::ToHost(void* host, const void* device, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  const cudaError_t err =
      cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_);
  if (err != cudaSuccess) {
    return Fail(absl::InternalError(
        absl::StrCat(name_, ": device-to-host copy: ", cudaGetErrorString(err))));
  }
  return absl::OkStatus();
}

absl::Status StagedCommunicator::ToDevice(void* device, const void* host, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  const cudaError_t err =
      cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_);
  if (err != cudaSuccess) {
    return Fail(absl::InternalError(
        absl::StrCat(name_, ": host-to-device copy: ", cudaGetErrorString(err))));
  }
  return absl::OkStatus();
}

absl::Status StagedCommunicator::Drain(const char* what) {
  absl::Status st = PollCuda(stream_, nullptr, deadline_, absl::StrCat(name_, ": ", what));
  return st.ok() ? st : Fail(st);
}

absl::Status StagedCommunicator::AllToAllV(const void* send, std::span<const size_t> send_counts,
                                           std::span<const size_t> send_offsets, void* recv,
                                           std::span<const size_t> recv_counts,
                                           std::span<const size_t> recv_offsets) {
  RETURN_IF_ERROR(broken_);
  const int P = size();
  if (static_cast<int>(send_counts.size()) != P || static_cast<int>(send_offsets.size()) != P ||
      static_cast<int>(recv_counts.size()) != P || static_cast<int>(recv_offsets.size()) != P) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllToAllV on ", name_, ": counts and offsets need ", P, " entries"));
  }
  // Host blocks are packed back to back (the device offsets may leave gaps).
  std::vector<size_t> hs_off(P), hr_off(P);
  size_t hs = 0, hr = 0;
  for (int r = 0; r < P; ++r) {
    hs_off[r] = hs;
    hs += send_counts[r];
    hr_off[r] = hr;
    hr += recv_counts[r];
  }
  RETURN_IF_ERROR(Reserve(&send_, hs));
  RETURN_IF_ERROR(Reserve(&recv_, hr));
  auto* hsend = static_cast<char*>(send_.data);
  auto* hrecv = static_cast<char*>(recv_.data);
  for (int r = 0; r < P; ++r) {
    RETURN_IF_ERROR(ToHost(hsend + hs_off[r], static_cast<const char*>(send) + send_offsets[r],
                           send_counts[r]));
  }
  RETURN_IF_ERROR(Drain("AllToAllV send staging"));
  absl::Status st = host_->AllToAllV(hsend, send_counts, hs_off, hrecv, recv_counts, hr_off);
  if (!st.ok()) return Fail(st);
  for (int r = 0; r < P; ++r) {
    RETURN_IF_ERROR(ToDevice(static_cast<char*>(recv) + recv_offsets[r], hrecv + hr_off[r],
                             recv_counts[r]));
  }
  return Drain("AllToAllV receive staging");
}

absl::Status StagedCommunicator::AllToAll(const void* send, void* recv, size_t bytes) {
  const int P = size();
  std::vector<size_t> counts(P, bytes), offsets(P);
  for (int r = 0; r < P; ++r) offsets[r] = static_cast<size_t>(r) * bytes;
  return AllToAllV(send, counts, offsets, recv, counts, offsets);
}

absl::Status StagedCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  RETURN_IF_ERROR(broken_);
  RETURN_IF_ERROR(Reserve(&send_, bytes));
  RETURN_IF_ERROR(ToHost(send_.data, data, bytes));
  RETURN_IF_ERROR(Drain("Send staging"));
  absl::Status st = host_->Send(send_.data, bytes, peer, tag);
  return st.ok() ? st : Fail(st);
}

absl::Status StagedCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  RETURN_IF_ERROR(broken_);
  RETURN_IF_ERROR(Reserve(&recv_, bytes));
  absl::Status st = host_->Recv(recv_.data, bytes, peer, tag);
  if (!st.ok()) return Fail(st);
  RETURN_IF_ERROR(ToDevice(data, recv_.data, bytes));
  return Drain("Recv staging");
}

absl::Status StagedCommunicator::Broadcast(void* data, size_t bytes, int root) {
  RETURN_IF_ERROR(broken_);
  RETURN_IF_ERROR(Reserve(&send_, bytes));
  if (rank() == root) {
    RETURN_IF_ERROR(ToHost(send_.data, data, bytes));
    RETURN_IF_ERROR(Drain("Broadcast staging"));
  }
  absl::Status st = host_->Broadcast(send_.data, bytes, root);
  if (!st.ok()) return Fail(st);
  if (rank() != root) {
    RETURN_IF_ERROR(ToDevice(data, send_.data, bytes));
    RETURN_IF_ERROR(Drain("Broadcast staging"));
  }
  return absl::OkStatus();
}

absl::Status StagedCommunicator::Gather(const void* send, size_t bytes, void* recv, int root) {
  RETURN_IF_ERROR(broken_);
  RETURN_IF_ERROR(Reserve(&send_, bytes));
  if (rank() == root) RETURN_IF_ERROR(Reserve(&recv_, bytes * size()));
  RETURN_IF_ERROR(ToHost(send_.data, send, bytes));
  RETURN_IF_ERROR(Drain("Gather staging"));
  absl::Status st = host_->Gather(send_.data, bytes, rank() == root ? recv_.data : nullptr, root);
  if (!st.ok()) return Fail(st);
  if (rank() == root) {
    RETURN_IF_ERROR(ToDevice(recv, recv_.data, bytes * size()));
    RETURN_IF_ERROR(Drain("Gather staging"));
  }
  return absl::OkStatus();
}

}  // namespace switchyard
