// CPU compute operations for the Mixtral forward pass. Weights stay in their stored type
// (BF16/F16/F32, usually bf16) and are widened to fp32 on the fly; activations and all
// arithmetic are fp32. Operations run multi-threaded with OpenMP over the process's threads
// and never allocate: callers pass scratch space where one is needed.
//
//   cpu::MatMul(x, T, wq, q);                       // q[T, N] = x[T, K] · Wq[N, K]^T
//   cpu::RmsNorm(x, gamma, T, H, eps, y);
//
// Nothing here checks its arguments, in any build (there are no asserts): input outside the
// contract is undefined behaviour (out-of-bounds reads and writes), not an error. The caller
// guarantees that
// - pointers are to distinct, non-overlapping buffers unless a function says "in place";
// - sizes are non-negative and every buffer holds at least the elements its documented shape
//   implies (e.g. MatMul: x holds T * W.cols floats, y T * W.rows);
// - shapes agree with each other: head_dim is even (Rope), n_heads is a multiple of n_kv_heads
//   and n_kv_heads * head_dim equals the cache's kv_dim (Attention), k <= E (RouterTopK);
// - indices are in range: token ids in [0, table.rows); block tables list existing blocks
//   covering every position the call reads or writes.
// What comes from outside is checked before it gets here: the model's shapes by
// LoadModelConfig, a step plan's token ids, positions and block tables by the executors.
#pragma once

#include <cstdint>

#include "model/tensor.h"

namespace switchyard::cpu {

// y[t, n] = sum_k x[t, k] * W[n, k] for t < T, n < W.rows; x row stride W.cols, y row stride
// W.rows. When `accumulate` is true, adds into y instead of overwriting it.
// Threads split the output rows (each weight byte is read by one thread); calls under ~32k
// multiply-adds stay on the calling thread. A row's result is bit-identical whatever T and
// the thread count (fixed per-row summation order).
void MatMul(const float* x, int T, const WeightMatrix& W, float* y, bool accumulate = false);

// out[t, :] = table[ids[t], :] widened to fp32. ids must be in [0, table.rows).
void Embedding(const WeightMatrix& table, const int32_t* ids, int T, float* out);

// out[t, i] = x[t, i] / sqrt(mean_i(x[t,:]^2) + eps) * weight[i], statistics in fp32.
// out may equal x (in place).
void RmsNorm(const float* x, const float* weight, int T, int H, float eps, float* out);

// Rotate-half RoPE, in place, on x[T, n_heads * head_dim] where row t is at positions[t]:
// for i < head_dim/2, with f = theta^(-2i/head_dim) and a = pos * f,
//   x'[i]        = x[i] cos a - x[i + d/2] sin a
//   x'[i + d/2]  = x[i + d/2] cos a + x[i] sin a
// As in the reference: inv_freq[i] = 1 / theta^(2i/head_dim) in fp32, the angle
// float(pos) * inv_freq[i] in fp32, then cos/sin of it. `inv_freq` holds head_dim/2 values
// from RopeInvFreq.
void RopeInvFreq(int head_dim, double theta, float* inv_freq);
void Rope(float* x, int T, int n_heads, int head_dim, const int32_t* positions,
          const float* inv_freq);

// Paged KV cache storage of one layer: blocks of `block_size` token slots, each slot holding
// kv_dim = n_kv_heads * head_dim floats for K and for V. A sequence's block table lists its
// blocks in order: position p lives in block table[p / block_size], slot p % block_size.
struct KvLayer {
  float* k = nullptr;  // [num_blocks, block_size, kv_dim]
  float* v = nullptr;
  int block_size = 0;
  int kv_dim = 0;
};

// Writes k[T, kv_dim], v[T, kv_dim] for positions start_pos .. start_pos+T-1.
void KvWrite(const KvLayer& cache, const int32_t* block_table, int start_pos, const float* k,
             const float* v, int T);

// Causal grouped-query attention for one sequence whose K/V for positions
// [0, start_pos + T) are already in `cache`. Query row t (position start_pos + t) attends to
// positions [0, start_pos + t]. q and out are [T, n_heads * head_dim]; head h reads KV head
// h / (n_heads / n_kv_heads). Scale 1/sqrt(head_dim), softmax in fp32.
// Scratch: thread i of the OpenMP team uses scratch + i * AttentionScratchFloats(start_pos + T),
// and the call runs on at most min(scratch_threads, omp_get_max_threads()) threads, so
// `scratch` must hold scratch_threads * AttentionScratchFloats(start_pos + T) floats. Pass
// scratch_threads >= omp_get_max_threads() for full parallelism (a smaller value only caps the
// threads). Not to be called concurrently by several threads sharing one scratch.
struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};
int64_t AttentionScratchFloats(int context_len);
void Attention(const float* q, int T, int start_pos, const KvLayer& cache,
               const int32_t* block_table, const AttentionShape& shape, float* out, float* scratch,
               int scratch_threads);

// Router: logits[T, E] -> softmax over all E in fp32 -> top-k (ties to the lower expert id)
// -> weights renormalised to sum 1. experts/weights are [T, k], in descending weight order.
void RouterTopK(const float* logits, int T, int E, int k, int32_t* experts, float* weights);

// SwiGLU expert over T rows: y = (silu(x W1^T) * (x W3^T)) W2^T, silu(a) = a / (1 + e^-a).
// x [T, H], w1/w3 [F, H], w2 [H, F], y [T, H]; scratch holds 2*T*F floats.
// When `accumulate_scale` is non-null, y[t] += accumulate_scale[t] * result[t] instead of
// overwriting y (the scale is applied to the down projection's input row, which is the same
// up to rounding).
void SwiGluExpert(const float* x, int T, const WeightMatrix& w1, const WeightMatrix& w3,
                  const WeightMatrix& w2, float* y, float* scratch,
                  const float* accumulate_scale = nullptr);

// The same expert over rows read and written in place, wherever they are (a receive buffer,
// the step's activations): row t is read at x[t] and its result goes to y[t] as
// scale[t] * result (scale may be null: 1), overwriting y[t] or, where accumulate[t] != 0
// (accumulate may be null: never), adding to it. The scale multiplies the finished output
// row, as a separate weighted sum would. scratch holds 2*T*F floats; the y[t] are distinct.
void SwiGluExpertRows(const float* const* x, int T, const WeightMatrix& w1,
                      const WeightMatrix& w3, const WeightMatrix& w2, float* const* y,
                      const float* scale, const uint8_t* accumulate, float* scratch);

// x[i] += y[i] for i < n.
void AddInPlace(float* x, const float* y, int64_t n);

}  // namespace switchyard::cpu
