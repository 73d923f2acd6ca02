// WorkerService (control.proto) on gRPC's callback API: Load, ExecuteStep and Shutdown from the
// coordinator.
//
// Handlers never block: each hands its request to the engine thread (EngineThread), the one
// thread that drives the WorkerRuntime, and that thread finishes the call's reactor when the work
// is done. Requests therefore run one at a time in arrival order; a step that arrives during a
// Load waits for it.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "grpcpp/support/status.h"
#include "switchyard/v1/control.grpc.pb.h"
#include "worker/worker_runtime.h"

namespace switchyard {

// One long-lived named thread that runs posted tasks in order. Thread-safe.
class EngineThread {
 public:
  explicit EngineThread(std::string name);
  ~EngineThread();  // Stop()

  // Queues `task`; false (task dropped) after Stop().
  bool Post(std::function<void()> task);
  // Runs the tasks already queued, then joins the thread. Idempotent.
  void Stop();

 private:
  void Loop();

  const std::string name_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// What the service reports to its owner (metrics, readiness, process exit). Called on the engine
// thread, except on_shutdown (on the gRPC thread, after the reply is finished): none may block.
struct WorkerServiceHooks {
  // After every Load, with its status (a failed reload leaves the worker unloaded).
  std::function<void(const v1::LoadRequest&, const v1::LoadResponse&, const absl::Status&)>
      on_loaded;
  // After every ExecuteStep, with its status and the seconds from request received to result.
  std::function<void(const v1::StepRequest&, const v1::StepResponse&, const absl::Status&,
                     double step_seconds)>
      on_step;
  std::function<void()> on_shutdown;
};

// Serves WorkerService for one WorkerRuntime, which it drives on its own engine thread. Does not
// own the runtime (which must outlive it). Thread-safe.
class WorkerControlService final : public v1::WorkerService::CallbackService {
 public:
  WorkerControlService(WorkerRuntime* runtime, WorkerServiceHooks hooks);
  ~WorkerControlService() override;

  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* context,
                                 const v1::LoadRequest* request,
                                 v1::LoadResponse* response) override;
  grpc::ServerUnaryReactor* ExecuteStep(grpc::CallbackServerContext* context,
                                        const v1::StepRequest* request,
                                        v1::StepResponse* response) override;
  grpc::ServerUnaryReactor* Shutdown(grpc::CallbackServerContext* context,
                                     const v1::ShutdownRequest* request,
                                     v1::ShutdownResponse* response) override;

  // Aborts the runtime's communicator (so a step blocked in a collective returns), then finishes
  // the queued work and stops the engine thread; later calls fail with UNAVAILABLE.
  void Stop();

 private:
  // Runs `work` on the engine thread and finishes the reactor with its status.
  grpc::ServerUnaryReactor* Dispatch(grpc::CallbackServerContext* context,
                                     std::function<absl::Status()> work);

  WorkerRuntime* runtime_;
  WorkerServiceHooks hooks_;
  EngineThread engine_thread_;
};

}  // namespace switchyard
