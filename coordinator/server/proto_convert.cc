#include "coordinator/server/proto_convert.h"

namespace switchyard {

GenerationParams ParamsFromProto(const v1::GenerateRequest& request) {
  GenerationParams p;
  p.model = request.model();
  if (request.has_text()) p.text = request.text();
  p.token_ids.assign(request.token_ids().begin(), request.token_ids().end());
  if (request.has_max_tokens()) p.max_tokens = request.max_tokens();
  if (request.has_temperature()) p.temperature = request.temperature();
  if (request.has_top_k()) p.top_k = request.top_k();
  if (request.has_top_p()) p.top_p = request.top_p();
  if (request.has_seed()) p.seed = request.seed();
  p.ignore_eos = request.ignore_eos();
  p.return_routing = request.return_routing();
  p.stop.assign(request.stop().begin(), request.stop().end());
  return p;
}

v1::FinishReason FinishReasonToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

std::optional<FinishReason> FinishReasonFromProto(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return FinishReason::kStop;
    case v1::FINISH_REASON_LENGTH:
      return FinishReason::kLength;
    case v1::FINISH_REASON_EOS:
      return FinishReason::kEos;
    case v1::FINISH_REASON_CANCELLED:
      return FinishReason::kCancelled;
    default:
      return std::nullopt;
  }
}

namespace {

void RoutingToProto(const std::vector<TokenRouting>& routing,
                    google::protobuf::RepeatedPtrField<v1::TokenRouting>* out) {
  for (const TokenRouting& t : routing) {
    v1::TokenRouting* token = out->Add();
    const size_t k = t.top_k > 0 ? t.top_k : 1;
    for (size_t at = 0; at + k <= t.experts.size(); at += k) {
      v1::LayerRouting* layer = token->add_layers();
      layer->mutable_experts()->Add(t.experts.begin() + at, t.experts.begin() + at + k);
      layer->mutable_weights()->Add(t.weights.begin() + at, t.weights.begin() + at + k);
    }
  }
}

}  // namespace

void EventToProto(const RequestEvent& event, v1::GenerateResponse* out) {
  out->mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
  RoutingToProto(event.routing, out->mutable_routing());
  out->set_text(event.text);
  if (event.finished) {
    out->set_finish_reason(FinishReasonToProto(event.finish_reason));
    out->set_prompt_tokens(event.prompt_tokens);
    out->set_completion_tokens(event.completion_tokens);
  }
}

void ResultToProto(const GenerationResult& result, v1::CompleteResponse* out) {
  out->mutable_token_ids()->Add(result.token_ids.begin(), result.token_ids.end());
  RoutingToProto(result.routing, out->mutable_routing());
  out->set_text(result.text);
  out->set_finish_reason(FinishReasonToProto(result.finish_reason));
  out->set_prompt_tokens(result.prompt_tokens);
  out->set_completion_tokens(result.completion_tokens);
}

void ModelInfoToProto(const ModelConfig& config, const std::string& name,
                      const ServingTopology& topology, v1::GetModelInfoResponse* out) {
  out->set_name(name);
  v1::ModelConfig* c = out->mutable_config();
  c->set_model_type(config.model_type);
  c->set_hidden_size(config.hidden_size);
  c->set_intermediate_size(config.intermediate_size);
  c->set_num_hidden_layers(config.num_hidden_layers);
  c->set_num_attention_heads(config.num_attention_heads);
  c->set_num_key_value_heads(config.num_key_value_heads);
  c->set_head_dim(config.head_dim);
  c->set_num_local_experts(config.num_local_experts);
  c->set_num_experts_per_tok(config.num_experts_per_tok);
  c->set_rms_norm_eps(config.rms_norm_eps);
  c->set_rope_theta(config.rope_theta);
  c->set_vocab_size(config.vocab_size);
  c->set_max_position_embeddings(config.max_position_embeddings);
  c->set_tie_word_embeddings(config.tie_word_embeddings);
  c->set_bos_token_id(config.bos_token_id);
  c->set_eos_token_id(config.eos_token_id);
  v1::ParameterCounts* p = out->mutable_parameters();
  p->set_total(config.TotalParams());
  p->set_active_per_token(config.ActiveParamsPerToken());
  p->set_per_layer(config.LayerParams());
  p->set_attention_per_layer(config.AttentionParamsPerLayer());
  p->set_per_expert(config.ExpertParams());
  out->set_max_context(config.max_position_embeddings);
  out->set_ep(topology.ep);
  out->set_pp(topology.pp);
  out->set_world_size(topology.world_size);
}

void ClusterStatusToProto(const ClusterStatusInfo& cluster, const SchedulerStats& stats,
                          bool draining, v1::GetClusterStatusResponse* out) {
  out->set_ep(cluster.ep);
  out->set_pp(cluster.pp);
  out->set_world_size(cluster.ep * cluster.pp);
  for (const RankStatus& r : cluster.ranks) {
    v1::RankStatus* rank = out->add_ranks();
    rank->set_world_rank(r.world_rank);
    rank->set_stage(r.stage);
    rank->set_ep_rank(r.ep_rank);
    rank->set_layer_begin(r.layer_begin);
    rank->set_layer_end(r.layer_end);
    for (const std::vector<int>& layer : r.experts) {
      rank->add_experts()->mutable_ids()->Add(layer.begin(), layer.end());
    }
    rank->set_weight_bytes(r.weight_bytes);
    rank->set_kv_bytes(r.kv_bytes);
    rank->set_steps(r.steps);
    rank->set_compute_seconds(r.compute_seconds);
    rank->set_wait_seconds(r.wait_seconds);
    rank->mutable_dispatch_bytes_sent()->Add(r.dispatch_bytes_sent.begin(),
                                             r.dispatch_bytes_sent.end());
    rank->set_expert_placement(r.experts_active);
  }
  for (const std::vector<int64_t>& layer : cluster.expert_token_counts) {
    out->add_expert_token_counts()->mutable_tokens()->Add(layer.begin(), layer.end());
  }
  v1::SchedulerStatus* s = out->mutable_scheduler();
  s->set_running(stats.running);
  s->set_waiting(stats.waiting);
  s->mutable_free_kv_blocks()->Add(stats.free_blocks.begin(), stats.free_blocks.end());
  s->mutable_total_kv_blocks()->Add(stats.total_blocks.begin(), stats.total_blocks.end());
  s->set_draining(stats.draining || draining);
  s->set_steps(stats.steps);
  s->set_generated_tokens(stats.generated_tokens);
  s->set_prompt_tokens(stats.prompt_tokens);
  s->set_failed(stats.failed);
}

}  // namespace switchyard
