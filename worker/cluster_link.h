// The worker's side of ClusterService membership: Register with the coordinator (retrying with
// backoff until it answers), then a heartbeat every interval; when the coordinator no longer knows
// the worker (NOT_FOUND: it restarted), register again.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "switchyard/v1/control.grpc.pb.h"

namespace switchyard {

struct ClusterLinkOptions {
  absl::Duration rpc_timeout = absl::Seconds(5);
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  absl::Duration heartbeat_interval = absl::Seconds(2);
};

// Owns one named thread (Start/Stop). registered() and worker_id() are thread-safe.
class ClusterLink {
 public:
  ClusterLink(std::shared_ptr<grpc::Channel> channel, std::string coordinator_address,
              ClusterLinkOptions options);
  ~ClusterLink();  // Stop()

  // Starts registering `registration` (worker_address, hostname, backend, metrics_address).
  // REQUIRES: called once.
  void Start(v1::RegisterRequest registration);
  // Wakes and joins the thread (an RPC in flight finishes within rpc_timeout). Idempotent.
  void Stop();

  bool registered() const { return registered_.load(); }
  std::string worker_id() const;

 private:
  void Run();
  // Registers, retrying until success or Stop; false when stopped.
  bool RegisterWithRetry();
  // Heartbeats until Stop (false) or the coordinator forgot this worker (true).
  bool HeartbeatUntilLost();

  std::unique_ptr<v1::ClusterService::Stub> stub_;
  const std::string coordinator_address_;
  const ClusterLinkOptions options_;
  v1::RegisterRequest registration_;  // set by Start, before the thread
  absl::Notification stop_;
  std::atomic<bool> registered_{false};
  mutable absl::Mutex mu_;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace switchyard
