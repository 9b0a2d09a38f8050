// Conversions between the switchyard.v1 protos and Switchyard's C++ types. Pure functions,
// thread-safe.
#pragma once

#include <optional>
#include <string>

#include "coordinator/finish_reason.h"
#include "coordinator/generation_queue.h"
#include "coordinator/server/cluster_status.h"
#include "coordinator/server/generation_result.h"
#include "coordinator/server/request_validation.h"
#include "model/config.h"
#include "switchyard/v1/switchyard.pb.h"

namespace switchyard {

// The request's fields as given (presence kept); validation happens in BuildGenerateRequest.
GenerationParams ParamsFromProto(const v1::GenerateRequest& request);

v1::FinishReason FinishReasonToProto(FinishReason reason);
// The inverse of FinishReasonToProto; nullopt for FINISH_REASON_UNSPECIFIED (a message that is
// not the last of its stream) and for values this build does not know.
std::optional<FinishReason> FinishReasonFromProto(v1::FinishReason reason);

// Copies the deltas of a non-error event, and on a final event the reason and counts.
void EventToProto(const RequestEvent& event, v1::GenerateResponse* out);
void ResultToProto(const GenerationResult& result, v1::CompleteResponse* out);

void ModelInfoToProto(const ModelConfig& config, const std::string& name,
                      const ServingTopology& topology, v1::GetModelInfoResponse* out);

// `draining` is ORed with stats.draining (the front end may drain before the scheduler).
void ClusterStatusToProto(const ClusterStatusInfo& cluster, const SchedulerStats& stats,
                          bool draining, v1::GetClusterStatusResponse* out);

}  // namespace switchyard
