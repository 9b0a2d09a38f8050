// A whole generation gathered from its RequestEvents (for the unary RPCs).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/generation_queue.h"

namespace switchyard {

struct GenerationResult {
  std::vector<int32_t> token_ids;
  std::vector<GeneratedLogprob> logprobs;  // one per token id when asked for
  std::vector<TokenRouting> routing;       // likewise
  std::string text;
  FinishReason finish_reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int completion_tokens = 0;

  // Appends the event's deltas; takes the counts and reason from a final event.
  void Add(const RequestEvent& event) {
    token_ids.insert(token_ids.end(), event.token_ids.begin(), event.token_ids.end());
    logprobs.insert(logprobs.end(), event.logprobs.begin(), event.logprobs.end());
    routing.insert(routing.end(), event.routing.begin(), event.routing.end());
    text += event.text;
    if (event.finished) {
      finish_reason = event.finish_reason;
      prompt_tokens = event.prompt_tokens;
      completion_tokens = event.completion_tokens;
    }
  }
};

}  // namespace switchyard
