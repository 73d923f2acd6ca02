#include "worker/control_service.h"

#include <pthread.h>

#include <utility>

#include "absl/time/clock.h"
#include "common/logging.h"

namespace switchyard {


EngineThread::EngineThread(std::string name) : name_(std::move(name)) {
  thread_ = std::thread([this] { Loop(); });
}

EngineThread::~EngineThread() { Stop(); }

bool EngineThread::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  tasks_.push_back(std::move(task));
  return true;
}

void EngineThread::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void EngineThread::Loop() {
  pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](EngineThread* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->tasks_.empty();
          },
          this));
      if (tasks_.empty()) return;  // stopping, nothing left
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

WorkerControlService::WorkerControlService(WorkerRuntime* runtime, WorkerServiceHooks hooks)
    : runtime_(runtime), hooks_(std::move(hooks)), engine_thread_("sy-engine") {}

WorkerControlService::~WorkerControlService() { Stop(); }

void WorkerControlService::Stop() {
  runtime_->Abort("worker stopping");
  engine_thread_.Stop();
}

grpc::ServerUnaryReactor* WorkerControlService::Dispatch(grpc::CallbackServerContext* context,
                                                         std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const bool posted = engine_thread_.Post(
      [reactor, work = std::move(work)] { reactor->Finish(ToGrpcStatus(work())); });
  if (!posted) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker is shutting down"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* WorkerControlService::Load(grpc::CallbackServerContext* context,
                                                     const v1::LoadRequest* request,
                                                     v1::LoadResponse* response) {
  SY_LOG_INFO("Load: rank {}/{}, prefix '{}', data plane {}", request->rank(),
              request->world_size(), request->rendezvous_prefix(), request->data_plane());
  return Dispatch(context, [this, request, response] {
    absl::Status status = runtime_->Load(*request, response);
    if (!status.ok()) SY_LOG_ERROR("Load rank {} failed: {}", request->rank(), status.ToString());
    if (hooks_.on_loaded) hooks_.on_loaded(*request, *response, status);
    return status;
  });
}

grpc::ServerUnaryReactor* WorkerControlService::ExecuteStep(grpc::CallbackServerContext* context,
                                                            const v1::StepRequest* request,
                                                            v1::StepResponse* response) {
  const absl::Time received = absl::Now();
  return Dispatch(context, [this, request, response, received] {
    absl::Status status = runtime_->ExecuteStep(*request, response);
    const double seconds = absl::ToDoubleSeconds(absl::Now() - received);
    if (!status.ok()) {
      SY_LOG_WARN("step={} failed: {}", request->step_id(), status.ToString());
    } else {
      SY_LOG_DEBUG("step={} seqs={} tokens={} sampled={} in {:.3f} ms", request->step_id(),
                   request->work_size(), request->token_ids_size(), response->tokens_size(),
                   seconds * 1e3);
    }
    if (hooks_.on_step) hooks_.on_step(*request, *response, status, seconds);
    return status;
  });
}

grpc::ServerUnaryReactor* WorkerControlService::Shutdown(grpc::CallbackServerContext* context,
                                                         const v1::ShutdownRequest* /*request*/,
                                                         v1::ShutdownResponse* /*response*/) {
  SY_LOG_INFO("Shutdown requested by the coordinator");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  if (hooks_.on_shutdown) hooks_.on_shutdown();
  return reactor;
}

}  // namespace switchyard
