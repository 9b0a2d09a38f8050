// The MoE of a layer (worker/moe.h): the router's choices go through an ExpertDispatcher over
// the stage's EP group and this rank's experts run through GroupedExperts. Over a group of
// one rank (SelfCommunicator) it is the single-process MoE: nothing is copied or sent, the
// experts read the tokens' rows and write their weighted sums straight into `out`.
#pragma once

#include "comm/expert_dispatcher.h"
#include "worker/moe.h"

namespace switchyard {

class ExpertParallelMoe : public MoeRunner {
 public:
  // `routing[layer][expert]` lists the EP ranks holding each expert; `max_tokens` is the most
  // tokens this rank brings to one layer. `comm` and `weights` must outlive this object.
  ExpertParallelMoe(const ModelWeights& weights, Communicator* comm, ExpertRanks routing,
                    int max_tokens);
  absl::Status Run(int layer, const float* x, int T, const int32_t* experts,
                   const float* weights, float* out) override;
  const ExpertDispatcher& dispatcher() const { return dispatcher_; }
  // ExpertDispatcher::SetRouting: between Forwards, on every rank of the group.
  absl::Status SetRouting(ExpertRanks routing) { return dispatcher_.SetRouting(std::move(routing)); }

 private:
  GroupedExperts experts_;
  ExpertDispatcher dispatcher_;
};

// Every expert of every layer on rank 0: the routing of a group of one.
ExpertRanks SingleRankRouting(const ModelConfig& cfg);

}  // namespace switchyard
