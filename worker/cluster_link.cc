#include "worker/cluster_link.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

#include "common/logging.h"
#include "grpcpp/client_context.h"

namespace switchyard {

ClusterLink::ClusterLink(std::shared_ptr<grpc::Channel> channel, std::string coordinator_address,
                         ClusterLinkOptions options)
    : stub_(v1::ClusterService::NewStub(std::move(channel))),
      coordinator_address_(std::move(coordinator_address)),
      options_(std::move(options)) {}

ClusterLink::~ClusterLink() { Stop(); }

void ClusterLink::Start(v1::RegisterRequest registration) {
  registration_ = std::move(registration);
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "sy-cluster-link");
    Run();
  });
}

void ClusterLink::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

std::string ClusterLink::worker_id() const {
  absl::MutexLock lock(&mu_);
  return worker_id_;
}

void ClusterLink::Run() {
  while (RegisterWithRetry()) {
    if (!HeartbeatUntilLost()) return;
    registered_ = false;
    SY_LOG_WARN("coordinator {} no longer knows this worker; registering again",
                coordinator_address_);
  }
}

bool ClusterLink::RegisterWithRetry() {
  absl::Duration backoff = options_.initial_backoff;
  for (int attempt = 1; !stop_.HasBeenNotified(); ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    v1::RegisterResponse response;
    const grpc::Status status = stub_->Register(&context, registration_, &response);
    if (status.ok()) {
      {
        absl::MutexLock lock(&mu_);
        worker_id_ = response.worker_id();
      }
      registered_ = true;
      SY_LOG_INFO("registered with coordinator {} as {} ({} workers expected)",
                  coordinator_address_, response.worker_id(), response.expected_workers());
      return true;
    }
    SY_LOG_DEBUG("register attempt {} with coordinator {} failed: {} {}", attempt,
                 coordinator_address_, static_cast<int>(status.error_code()),
                 status.error_message());
    if (stop_.WaitForNotificationWithTimeout(backoff)) return false;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  return false;
}

bool ClusterLink::HeartbeatUntilLost() {
  while (!stop_.WaitForNotificationWithTimeout(options_.heartbeat_interval)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    v1::HeartbeatRequest request;
    request.set_worker_id(worker_id());
    v1::HeartbeatResponse response;
    const grpc::Status status = stub_->Heartbeat(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) return true;
    if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      // The coordinator declared this worker lost; it will not take it back, so stop reporting
      // ready (a restart re-forms the group).
      registered_ = false;
      SY_LOG_WARN("coordinator {} declared this worker lost: {}", coordinator_address_,
                  status.error_message());
      return false;
    }
    if (!status.ok()) {
      SY_LOG_DEBUG("heartbeat to coordinator {} failed: {} {}", coordinator_address_,
                   static_cast<int>(status.error_code()), status.error_message());
    }
  }
  return false;
}

}  // namespace switchyard
