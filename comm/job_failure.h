// The process-wide "this job cannot go on" flag. Whoever learns that a rank has failed (the
// liveness channel, comm/liveness.h) declares it once; every blocking communication wait in
// the process checks it on each poll and returns the declared status, so a thread stuck
// waiting on a dead or stopped peer is released in milliseconds instead of at its deadline.
//
//   DeclareJobFailure(absl::UnavailableError("rank 2 (pid 4711 on node07) was killed"));
//   ...
//   if (JobFailed()) return JobFailure();   // in a wait loop: one relaxed atomic load
#pragma once

#include "absl/status/status.h"

namespace switchyard {

// Records `status` (which must not be OK) as the job's failure. The first call wins; later
// ones are ignored. Thread-safe and async-signal-unsafe.
void DeclareJobFailure(const absl::Status& status);
// True once a failure was declared. One relaxed atomic load: cheap enough for poll loops.
bool JobFailed();
// The declared failure, or OK.
absl::Status JobFailure();
// The communication wait this process is in, for the liveness beats (comm/liveness.h): the
// world rank of a peer whose data or delivery is still outstanding, or -1 when not waiting.
// Set by the communicators' waits (one thread drives communication).
void EnterWait(int world_peer);
void LeaveWait();
int WaitingOn();

// Tests only: forget the declared failure.
void ResetJobFailureForTest();

}  // namespace switchyard
