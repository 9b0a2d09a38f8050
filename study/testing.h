// Test helpers of study/: a model small enough that a step's costs are worked out by hand.
#pragma once

#include "model/config.h"

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

}  // namespace switchyard
