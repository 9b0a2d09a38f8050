// The job's liveness channel: how every rank learns within seconds that another rank was
// killed, stopped or hung, without relying on the communication deadline (--comm-timeout,
// which must be long enough for the longest legitimate step).
//
// A star of TCP connections outside MPI (MPI runs MPI_THREAD_SERIALIZED and a killed peer is
// not reported by every MPI transport): rank 0 listens (on loopback when every rank shares
// its host, else on the address its host name resolves to, or SWITCHYARD_CONTROL_HOST), every
// other rank connects and presents a per-job token. A thread on each rank sends a beat every
// `interval` carrying what its main thread is doing (ProgressMeter) and how far its weights
// have loaded. Rank 0 declares a rank failed when
//   - its connection closes without an orderly goodbye (the process was killed or exited),
//   - no beat arrives for `timeout` (5 s by default: the process is stopped or frozen), or
//   - it is stuck in an operation its peers finished long ago: a rank that has not finished
//     operation k while another finished it more than max(timeout, 2 x that rank's duration
//     of k) ago (so a long, legitimate step never counts), or rank 0's own scheduler issues no
//     operation for longer than its cadence plus `timeout`.
// Workers declare the job failed when rank 0's connection closes without a goodbye, rank 0
// is silent for `timeout`, or rank 0 sends an abort with its reason.
//
// Declaring a failure logs it, calls DeclareJobFailure (every blocking communication wait in
// the process returns it at once), and then, unless the process exits by itself first,
// ends the process with exit code 1 after `exit_grace`: rank 0 first tells the live workers
// why (after `abort_delay`, once its own clients have had their errors), so every process is
// gone within about five seconds of the failure and nothing is left orphaned.
//
//   ProgressMeter progress;                  // the main thread: Begin()/End() per operation
//   ASSIGN_OR_RETURN(auto live, Liveness::Start(*world, &progress, {}));   // collective
//   ...
//   live->Stop();                            // orderly end (rank 0 says goodbye first)
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "common/progress_meter.h"

namespace switchyard {

struct LivenessOptions {
  // Silence after which a rank is declared failed; also the floor of the progress check.
  absl::Duration timeout = absl::Seconds(5);
  // Period of the beats (and of the checks).
  absl::Duration interval = absl::Milliseconds(250);
  // How long rank 0 waits for every rank to connect, and a worker to reach rank 0.
  absl::Duration connect_timeout = absl::Seconds(60);
  // After rank 0 declares a failure: when it sends the abort to live workers.
  absl::Duration abort_delay = absl::Seconds(1);
  // After a failure: when the liveness thread ends the process (exit code 1) if it is still
  // running. Zero or exit_process false: never (tests).
  absl::Duration exit_grace = absl::Seconds(3);
  bool exit_process = true;
  // Pipeline stages of the job: an early stage may finish a step (PP-1)/PP of it before the
  // last, so the progress check allows 2 x PP x an operation's duration.
  int pipeline_stages = 1;
  // Whom this rank's main thread waits for (a world rank, -1: nobody); the communicators
  // record it (WaitingOn in comm/job_failure.h). Tests set their own.
  std::function<int()> waiting_on;
};

class Liveness {
 public:
  // Collective over `world` (every rank calls it at the same point): sets the channel up and
  // starts the beats. `progress` (may be null) must outlive the result. Errors name the
  // ranks that did not connect and the address they were given.
  static absl::StatusOr<std::unique_ptr<Liveness>> Start(Communicator& world,
                                                         const ProgressMeter* progress,
                                                         const LivenessOptions& options);

  // The two halves of Start, for tests without MPI: rank 0 listens on `host` (port chosen by
  // the system), then AcceptPeers waits for ranks 1..world_size-1; a worker Connects.
  struct Endpoint {
    std::string host;  // where rank 0 listens
    int port = 0;
    std::string token;
    int pid = 0;             // rank 0's process, for messages
    std::string host_name;   // rank 0's host name, for messages
  };
  static absl::StatusOr<std::unique_ptr<Liveness>> Listen(int world_size, const std::string& host,
                                                          const ProgressMeter* progress,
                                                          const LivenessOptions& options);
  const Endpoint& endpoint() const { return endpoint_; }
  absl::Status AcceptPeers();
  static absl::StatusOr<std::unique_ptr<Liveness>> Connect(int rank, int world_size,
                                                           const Endpoint& endpoint,
                                                           const ProgressMeter* progress,
                                                           const LivenessOptions& options);

  // Stops the thread and closes the connections; declares nothing.
  ~Liveness();
  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;

  int rank() const { return rank_; }
  // The first failure this rank saw (OK while every rank is well).
  absl::Status failure() const;

  // Runs `fn` on the liveness thread when this rank declares a failure, before any wait is
  // released (serve turns health NOT_SERVING there, so no client sees an error while health
  // still says SERVING). Set it before failures matter; it must not block.
  void OnFailure(std::function<void(const absl::Status&)> fn);

  // Rank 0: its main thread starts an operation at least every `cadence` (serve's scheduler
  // runs a liveness round every second even when idle); longer than cadence + timeout
  // between operations means it is stuck. Zero (the default) turns the check off: call it
  // with zero before a shutdown that stops issuing operations.
  void ExpectOperationsEvery(absl::Duration cadence);
  // Rank 0: after a signal, whether it came from a failure: waits up to `within` for a beat
  // from every worker sent after this call, and returns the failure if one is seen (OK when
  // every worker answered, or `within` passed with no failure).
  absl::Status ConfirmAlive(absl::Duration within);
  // Workers: tells rank 0 why this rank is about to exit with an error (rank 0 names the
  // rank and the reason), then stops. Does nothing after a failure this rank declared.
  void ReportExit(const absl::Status& why);
  // The end of this rank's part, as `how` says: Stop() on rank 0 or when OK, else
  // ReportExit(how).
  void End(const absl::Status& how);
  // Rank 0 after a failure, once its clients have their errors: tells every live worker why,
  // so they exit now (the thread does it anyway after abort_delay). Idempotent.
  void AbortWorkers();
  // The orderly end: rank 0 says goodbye to every worker (their later disconnects are not
  // failures); a worker stops watching rank 0. Joins the thread.
  void Stop();

  // Tests: the thread stops beating, reading and checking, as if the process were stopped.
  void FreezeForTest() { frozen_.store(true); }

  // This rank's loading progress, sent with each beat; rank 0 logs the job's sum every 10 s
  // while a rank is still loading.
  void SetLoadProgress(uint64_t done, uint64_t total);
  // Rank 0: the job's loading progress, summed over every rank's last beat.
  std::pair<uint64_t, uint64_t> JobLoadProgress() const;

 private:
  struct Peer;
  // "rank 2 (pid 4711 on node07)", or "rank 2" before its pid is known. Describe takes mu_.
  static std::string DescribeLocked(const Peer& p);
  // Whom this rank's main thread waits for (options_.waiting_on, or the communicators').
  int WaitingNow() const;
  // Workers: an exit frame with `why` to rank 0, if its connection is open.
  void SendExit(const std::string& why);
  Liveness(int rank, int world_size, const ProgressMeter* progress,
           const LivenessOptions& options);
  void StartThread();
  void Loop();
  void SendBeats(bool goodbye);
  void SendAbort(const std::string& reason);
  // Reads what `peer` sent; false when its connection is gone.
  bool ReadFrom(Peer& peer);
  void CheckPeers(absl::Time now);
  void CheckProgress(absl::Time now);
  // Rank 0, every 10 s while some rank is still loading: the job's loading progress.
  void LogJobLoad(absl::Time now);
  // Declares `status` (the first one only). On a worker, unless it came from rank 0's
  // abort, rank 0 is told too.
  void Fail(absl::Status status, bool from_rank0 = false);
  std::string Describe(int rank) const;

  const int rank_;
  const int world_size_;
  const ProgressMeter* const progress_;
  const LivenessOptions options_;
  const std::string host_name_;
  Endpoint endpoint_;
  int listen_fd_ = -1;
  std::vector<Peer> peers_;  // rank 0: index = rank (0 unused); workers: one, rank 0

  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> frozen_{false};
  std::atomic<int64_t> cadence_ns_{0};
  std::atomic<uint64_t> load_done_{0}, load_total_{0};
  std::atomic<int64_t> confirm_after_ns_{0};  // ConfirmAlive's reference time

  mutable std::mutex mu_;
  absl::Status failure_;  // GUARDED_BY(mu_)
  std::function<void(const absl::Status&)> on_failure_;  // GUARDED_BY(mu_) and callback_mu_
  std::mutex callback_mu_;  // held while on_failure_ runs, so OnFailure(nullptr) waits for it
  std::mutex send_mu_;      // the abort is sent once, by the thread or AbortWorkers
  absl::Time failed_at_;  // GUARDED_BY(mu_)
  bool abort_sent_ = false;
  // Progress check (rank 0, thread only): operation number -> when some rank was first seen
  // to have finished it, and how long it took there.
  struct Finished {
    absl::Time at;
    absl::Duration took;
    int rank;
  };
  std::map<uint64_t, Finished> finished_;
  absl::Time last_load_log_;
};

}  // namespace switchyard
