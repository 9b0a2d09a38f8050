// Host side of the CUDA kernels library: the error conversions, device discovery, and the
// cuBLAS GEMMs (dense, per-expert loop, batched over expert slots).
//
// Expert FFN choice: two paths over the same grouped layout (MoePermute).
// - ExpertFfnPacked, for prefill and mixed steps: the per-expert row counts come back to the
//   host (one small copy and sync per layer), then one cublasGemmEx per active expert for w13
//   and for w2 on the caller's stream. Exact shapes, no wasted rows, and every GEMM is large
//   enough in prefill that launch overhead does not matter.
// - ExpertFfnBatched, for decode steps captured in CUDA graphs: shapes must not depend on the
//   routing, so each of min(E, T*k) slots runs `capacity` (= T) rows of one active expert in a
//   cublasGemmBatchedEx whose pointer tables MoePermute built on the device. A decode step at
//   batch 1 reads exactly its k experts' weights; padding rows cost compute, not bandwidth.
// cublasGemmGroupedBatchedEx would also take per-group sizes, but from host arrays, so it needs
// the same host round trip as the loop and brings nothing for graphs; the loop is simpler.
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "kernels/cuda/ops.h"

namespace switchyard::cuda {
namespace {

// "dir/file.cc" from a full path: enough to find the line, short enough to read.
std::string ShortPath(const char* file) {
  std::string f = file;
  size_t cut = f.rfind('/');
  if (cut != std::string::npos && cut > 0) cut = f.rfind('/', cut - 1);
  return cut == std::string::npos ? f : f.substr(cut + 1);
}

}  // namespace

absl::Status LaunchCheck(const char* what, cudaStream_t stream, const char* file, int line) {
  if (absl::Status s = CudaCheck(cudaGetLastError(), what, file, line); !s.ok()) return s;
  static const bool sync = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && std::string(v) != "0";
  }();
  if (!sync) return absl::OkStatus();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess ||
      capture != cudaStreamCaptureStatusNone) {
    return absl::OkStatus();  // inside a graph capture nothing may synchronise
  }
  const std::string executing = std::string(what) + " (executing; SWITCHYARD_CUDA_SYNC)";
  return CudaCheck(cudaStreamSynchronize(stream), executing.c_str(), file, line);
}

absl::Status CudaCheck(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrFormat("%s: %s (%s) at %s:%d", what, cudaGetErrorName(err),
                                          cudaGetErrorString(err), ShortPath(file), line);
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status CublasCheck(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrFormat("%s: %s (%s) at %s:%d", what, cublasGetStatusName(st),
                                          cublasGetStatusString(st), ShortPath(file), line);
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
    return absl::InvalidArgumentError(msg);
  }
  return absl::InternalError(msg);
}

bool DeviceAvailable() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not see it
    return false;
  }
  return n > 0;
}

absl::Status BindCublas(const GemmContext& ctx, void* workspace, size_t workspace_bytes) {
  RETURN_IF_ERROR(CublasCheck(cublasSetStream(ctx.handle, ctx.stream), "cublasSetStream"));
  // After the stream: cublasSetStream resets the workspace to cuBLAS's own pool.
  RETURN_IF_ERROR(CublasCheck(cublasSetWorkspace(ctx.handle, workspace, workspace_bytes),
                              "cublasSetWorkspace"));
  return CublasCheck(cublasSetMathMode(ctx.handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

absl::Status Gemm(const GemmContext& ctx, const GemmParams& p) {
  if (p.rows == 0 || p.n == 0) return absl::OkStatus();
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major y[rows, n] is column-major y^T[n, rows] = W (col-major view [k, n], transposed)
  // times x^T (col-major [k, rows]).
  return CublasCheck(cublasGemmEx(ctx.handle, CUBLAS_OP_T, CUBLAS_OP_N, p.n, p.rows, p.k, &alpha,
                                  p.w, CUDA_R_16BF, p.k, p.x, CUDA_R_16BF, p.k, &beta, p.y,
                                  p.out == GemmOut::kBf16 ? CUDA_R_16BF : CUDA_R_32F, p.n,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx");
}

absl::Status ExpertFfnPacked(const GemmContext& ctx, const ExpertFfnParams& p,
                             const int32_t* host_counts) {
  const int64_t H = p.hidden, F = p.ffn;
  int64_t off = 0;
  for (int e = 0; e < p.num_experts; ++e) {
    const int n = host_counts[e];
    if (n == 0) continue;
    RETURN_IF_ERROR(Gemm(ctx, {.x = p.rows + off * H,
                               .rows = n,
                               .w = p.w13 + e * 2 * F * H,
                               .n = static_cast<int>(2 * F),
                               .k = static_cast<int>(H),
                               .y = p.h13 + off * 2 * F,
                               .out = GemmOut::kBf16}));
    off += n;
  }
  RETURN_IF_ERROR(SiluGate({.h = p.h13, .rows = off, .ffn = p.ffn, .out = p.act}, ctx.stream));
  off = 0;
  for (int e = 0; e < p.num_experts; ++e) {
    const int n = host_counts[e];
    if (n == 0) continue;
    RETURN_IF_ERROR(Gemm(ctx, {.x = p.act + off * F,
                               .rows = n,
                               .w = p.w2 + e * H * F,
                               .n = static_cast<int>(H),
                               .k = static_cast<int>(F),
                               .y = p.y + off * H,
                               .out = GemmOut::kF32}));
    off += n;
  }
  return absl::OkStatus();
}

absl::Status ExpertFfnBatched(const GemmContext& ctx, const ExpertFfnParams& p,
                              const BatchedExpertPointers& ptrs, int num_slots, int capacity) {
  if (num_slots == 0 || capacity == 0) return absl::OkStatus();
  const float alpha = 1.0f, beta = 0.0f;
  const int H = p.hidden, F = p.ffn;
  RETURN_IF_ERROR(CublasCheck(
      cublasGemmBatchedEx(ctx.handle, CUBLAS_OP_T, CUBLAS_OP_N, 2 * F, capacity, H, &alpha,
                          ptrs.a13, CUDA_R_16BF, H, ptrs.b13, CUDA_R_16BF, H, &beta, ptrs.c13,
                          CUDA_R_16BF, 2 * F, num_slots, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmBatchedEx(w13)"));
  RETURN_IF_ERROR(SiluGate(
      {.h = p.h13, .rows = static_cast<int64_t>(num_slots) * capacity, .ffn = F, .out = p.act},
      ctx.stream));
  return CublasCheck(
      cublasGemmBatchedEx(ctx.handle, CUBLAS_OP_T, CUBLAS_OP_N, H, capacity, F, &alpha, ptrs.a2,
                          CUDA_R_16BF, F, ptrs.b2, CUDA_R_16BF, F, &beta, ptrs.c2, CUDA_R_32F, H,
                          num_slots, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmBatchedEx(w2)");
}

}  // namespace switchyard::cuda
