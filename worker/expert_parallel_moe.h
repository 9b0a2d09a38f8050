// MoeRunner for expert parallelism: the router's choices go through an ExpertDispatcher over
// the stage's EP group, and this rank's experts run through GroupedExperts.
#pragma once

#include <memory>

#include "comm/expert_dispatcher.h"
#include "worker/moe.h"

namespace switchyard {

class ExpertParallelMoe : public MoeRunner, private LocalExperts {
 public:
  // `routing[layer][expert]` lists the EP ranks holding each expert; `max_tokens` is the most
  // tokens this rank brings to one layer. `comm` and `weights` must outlive this object.
  ExpertParallelMoe(const ModelWeights& weights, Communicator* comm, ExpertRanks routing,
                    int max_tokens);
  absl::Status Run(int layer, const float* x, int T, const int32_t* experts,
                   const float* weights, float* out) override;
  const ExpertDispatcher& dispatcher() const { return dispatcher_; }

 private:
  void Run(int layer, const float* rows, const int32_t* counts, float* y) override;

  GroupedExperts grouped_;
  ExpertDispatcher dispatcher_;
};

}  // namespace switchyard
