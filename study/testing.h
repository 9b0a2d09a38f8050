// Test helpers of study/: a model small enough that a step's costs are worked out by hand.
#pragma once

#include "model/config.h"
#include "study/operation_costs.h"

namespace switchyard {

// hidden 4, intermediate 8, one head of 4 (q 4, kv 4), 2 experts, top-1, vocab 16. Per layer:
// attention q/k/v (4 x 12), o (4 x 4), router (4 x 2) = 72 parameters; an expert 3 x 4 x 8 =
// 96; lm_head 4 x 16 = 64.
inline ModelConfig TinyMoeConfig(int layers, int context) {
  ModelConfig c;
  c.hidden_size = 4;
  c.intermediate_size = 8;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 1;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.num_local_experts = 2;
  c.num_experts_per_tok = 1;
  c.vocab_size = 16;
  c.max_position_embeddings = context;
  return c;
}

// Operation costs at TinyMoeConfig's shapes (one layer timed at 1 and 4 rows), for the cost
// model's measured path: a layer is its dense work, each sequence's attention and the experts
// used, the step ends with the head.
inline OperationCosts TinyOperations(const ModelConfig& cfg) {
  OperationCosts o;
  o.hidden = cfg.hidden_size;
  o.intermediate = cfg.intermediate_size;
  o.heads = cfg.num_attention_heads;
  o.kv_heads = cfg.num_key_value_heads;
  o.head_dim = cfg.head_dim;
  o.experts = cfg.num_local_experts;
  o.top_k = cfg.num_experts_per_tok;
  o.vocab = cfg.vocab_size;
  o.layers = 1;
  o.rows = {1, 4};
  o.dense_s = {1e-6, 4e-6};
  o.expert_s = {2e-6, 5e-6};
  o.head_s = {3e-6, 9e-6};
  o.attention_call_s = 1e-7;
  o.attention_pair_s = 1e-9;
  return o;
}

}  // namespace switchyard
