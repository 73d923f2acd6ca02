// switchyard-worker: one expert-parallel rank. Serves WorkerService on --control_port, registers
// with the coordinator at --coordinator_address, joins the Gloo data plane when the coordinator
// calls Load, runs a step per ExecuteStep, and serves /metrics and /health on --http_port.
// SIGTERM or SIGINT (or a Shutdown call) stops it; it exits 0.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/cli_support.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "worker/backend/backend.h"
#include "worker/cluster_link.h"
#include "worker/comm/gloo_communicator.h"
#if defined(SWITCHYARD_HAVE_NCCL)
#include "worker/comm/nccl_communicator.h"
#endif
#include "worker/control_service.h"
#include "worker/step_metrics.h"
#include "worker/store_client.h"
#include "worker/worker_runtime.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (overrides the coordinator's model_dir)");
ABSL_FLAG(std::string, served_model_name, "", "model name in metrics (default: the dir name)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off");
ABSL_FLAG(std::string, coordinator_address, "127.0.0.1:50052",
          "host:port of the coordinator's ClusterService");
ABSL_FLAG(std::string, host, "0.0.0.0", "address the control and HTTP servers bind");
ABSL_FLAG(std::string, advertise_host, "127.0.0.1",
          "address the coordinator and the other ranks reach this worker at");
ABSL_FLAG(int32_t, control_port, 50061, "WorkerService gRPC port (0: pick a free port)");
ABSL_FLAG(int32_t, http_port, 8001, "HTTP port of /metrics and /health (0: pick a free port)");
ABSL_FLAG(std::string, backend, "auto", "cpu, cuda, or auto (cuda when a GPU is usable, else cpu)");
ABSL_FLAG(int64_t, kv_cache_mb, 0, "KV-cache budget in MiB (0: the coordinator's value)");
ABSL_FLAG(bool, metrics_per_expert, false, "export switchyard_moe_expert_tokens_total");
ABSL_FLAG(std::string, port_file, "", "write the bound ports as JSON to this file");
ABSL_FLAG(double, heartbeat_interval_s, 2.0, "seconds between heartbeats to the coordinator");

namespace switchyard {
namespace {

std::atomic<bool> g_shutdown_requested{false};

// The data plane the coordinator asked for in Load: Gloo over TCP, or NCCL on this worker's GPU.
// The coordinator's store serves both rendezvous (Gloo's addresses, NCCL's unique id).
absl::StatusOr<std::unique_ptr<Communicator>> MakeCommunicator(
    const v1::LoadRequest& request, const std::string& backend,
    const std::string& coordinator_address, const std::string& advertise_host,
    std::shared_ptr<std::atomic<bool>> cancelled) {
  const std::string& data_plane = request.data_plane();
  if (!data_plane.empty() && data_plane != "gloo" && data_plane != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("data plane: expected gloo or nccl, found '", data_plane, "'"));
  }
  CommunicatorOptions comm_options;
  if (request.comm_timeout_ms() > 0) {
    comm_options.timeout = absl::Milliseconds(request.comm_timeout_ms());
  }
  ClusterStoreOptions store_options;
  store_options.cancelled = std::move(cancelled);
  auto store = std::make_shared<ClusterStore>(
      grpc::CreateChannel(coordinator_address, grpc::InsecureChannelCredentials()),
      coordinator_address, store_options);
  const int rank = static_cast<int>(request.rank());
  const int world_size = static_cast<int>(request.world_size());
  if (data_plane == "nccl") {
    if (backend != "cuda") {
      return absl::FailedPreconditionError(absl::StrCat(
          "data plane nccl needs the cuda backend, this worker runs ", backend));
    }
#if defined(SWITCHYARD_HAVE_NCCL)
    NcclCommunicatorOptions options;
    options.comm = comm_options;
    options.device = 0;  // the CUDA backend's device (one visible GPU per worker)
    if (!request.rendezvous_prefix().empty()) {
      options.store_prefix = request.rendezvous_prefix() + "nccl";
    }
    return CreateNcclCommunicator(std::move(store), rank, world_size, options);
#else
    return absl::UnimplementedError(
        "data plane nccl: this worker was built without NCCL (configure with "
        "-DSWITCHYARD_WITH_NCCL=ON)");
#endif
  }
  GlooCommunicatorOptions options;
  options.comm = comm_options;
  options.hostname = advertise_host;
  if (!request.rendezvous_prefix().empty()) options.store_prefix = request.rendezvous_prefix();
  return CreateGlooCommunicator(std::move(store), rank, world_size, options);
}

absl::Status WritePortFile(const std::string& path, int control_port, int http_port) {
  if (path.empty()) return absl::OkStatus();
  return WriteFileAtomically(
      path, nlohmann::json{{"control", control_port}, {"http", http_port}}.dump() + "\n");
}

// Metrics appear once the coordinator has assigned a rank (at Load); the engine thread owns them.
struct MetricsState {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::string model_name;
  bool per_expert = false;
  std::unique_ptr<metrics::WorkerMetrics> worker;
  std::unique_ptr<StepMetricsRecorder> recorder;
};

WorkerServiceHooks MakeHooks(WorkerRuntime& runtime, MetricsState& state,
                             std::atomic<bool>& loaded) {
  WorkerServiceHooks hooks;
  hooks.on_loaded = [&](const v1::LoadRequest& request, const v1::LoadResponse& response,
                        const absl::Status& status) {
    loaded = status.ok();
    if (!status.ok()) return;
    state.worker = std::make_unique<metrics::WorkerMetrics>(*state.registry, state.model_name,
                                                            static_cast<int>(request.rank()),
                                                            response.device(), state.per_expert);
    state.recorder = std::make_unique<StepMetricsRecorder>(state.worker.get());
    if (const Engine* engine = runtime.engine(); engine != nullptr) {
      state.worker->device_memory_used_bytes.Set(static_cast<double>(engine->resident_bytes()));
      state.worker->device_memory_total_bytes.Set(
          static_cast<double>(engine->backend().total_memory_bytes()));
    }
  };
  hooks.on_step = [&](const v1::StepRequest&, const v1::StepResponse& response,
                      const absl::Status& status, double seconds) {
    if (status.ok() && state.recorder != nullptr) {
      state.recorder->RecordStep(runtime, response, seconds);
    }
  };
  hooks.on_shutdown = [] { g_shutdown_requested = true; };
  return hooks;
}

// Blocks SIGTERM/SIGINT in every thread (call before starting any) and waits for one here.
void WaitForShutdown(const sigset_t& signals) {
  const timespec poll = {0, 200 * 1000 * 1000};
  while (!g_shutdown_requested.load()) {
    const int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig > 0) {
      SY_LOG_INFO("signal {}: shutting down", sig);
      return;
    }
  }
  SY_LOG_INFO("shutdown requested by the coordinator");
}

int Run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string coordinator_address = absl::GetFlag(FLAGS_coordinator_address);
  const std::string advertise_host = absl::GetFlag(FLAGS_advertise_host);
  const std::string host = absl::GetFlag(FLAGS_host);
  WorkerRuntimeOptions runtime_options;
  {
    // Fail fast on a bad --backend, and resolve "auto" for the registration.
    auto backend = MakeBackend(absl::GetFlag(FLAGS_backend));
    if (!backend.ok()) {
      SY_LOG_ERROR("--backend={}: {}", absl::GetFlag(FLAGS_backend), backend.status().ToString());
      return 2;
    }
    runtime_options.backend = std::string((*backend)->name());
  }
  runtime_options.model_dir = absl::GetFlag(FLAGS_model);
  runtime_options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_mb) << 20;
  // Set on shutdown, so that a Load waiting for its peers' rendezvous gives up at once.
  auto stopping = std::make_shared<std::atomic<bool>>(false);
  runtime_options.make_communicator = [=, backend = runtime_options.backend](
                                          const v1::LoadRequest& request) {
    return MakeCommunicator(request, backend, coordinator_address, advertise_host, stopping);
  };
  WorkerRuntime runtime(runtime_options);

  MetricsState metrics_state;
  metrics_state.per_expert = absl::GetFlag(FLAGS_metrics_per_expert);
  metrics_state.model_name = absl::GetFlag(FLAGS_served_model_name);
  if (metrics_state.model_name.empty()) {
    metrics_state.model_name =
        std::filesystem::path(absl::GetFlag(FLAGS_model)).lexically_normal().filename().string();
  }
  std::atomic<bool> loaded{false};
  WorkerControlService service(&runtime, MakeHooks(runtime, metrics_state, loaded));

  int control_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(host, ":", absl::GetFlag(FLAGS_control_port)),
                           grpc::InsecureServerCredentials(), &control_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || control_port == 0) {
    SY_LOG_ERROR("cannot listen on {}:{} for WorkerService", host,
                 absl::GetFlag(FLAGS_control_port));
    return 1;
  }

  ClusterLinkOptions link_options;
  link_options.heartbeat_interval = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_interval_s));
  ClusterLink link(grpc::CreateChannel(coordinator_address, grpc::InsecureChannelCredentials()),
                   coordinator_address, link_options);

  metrics::HttpServerOptions http_options;
  http_options.host = host;
  http_options.port = absl::GetFlag(FLAGS_http_port);
  auto http = metrics::MetricsHttpServer::Start(
      http_options, metrics_state.registry, [&loaded, &link]() -> absl::Status {
        if (!loaded.load()) return absl::UnavailableError("weights not loaded yet");
        if (!link.registered())
          return absl::UnavailableError("not registered with the coordinator");
        return absl::OkStatus();
      });
  if (!http.ok()) {
    SY_LOG_ERROR("cannot start the HTTP server: {}", http.status().ToString());
    return 1;
  }
  SY_LOG_INFO("listening: control={}:{} http={}:{}", host, control_port, host,
              (*http)->bound_port());
  if (absl::Status status =
          WritePortFile(absl::GetFlag(FLAGS_port_file), control_port, (*http)->bound_port());
      !status.ok()) {
    SY_LOG_ERROR("{}", status.ToString());
    return 1;
  }
  v1::RegisterRequest registration;
  registration.set_worker_address(absl::StrCat(advertise_host, ":", control_port));
  char hostname[256] = {};
  gethostname(hostname, sizeof(hostname) - 1);
  registration.set_hostname(hostname);
  registration.set_backend(runtime_options.backend);
  registration.set_metrics_address(absl::StrCat(advertise_host, ":", (*http)->bound_port()));
  link.Start(std::move(registration));

  WaitForShutdown(signals);
  *stopping = true;
  link.Stop();
  SY_LOG_DEBUG("cluster link stopped");
  service.Stop();
  SY_LOG_DEBUG("engine thread stopped");  // aborts the data plane, finishes queued calls, joins the
                                          // engine thread
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->Wait();
  SY_LOG_DEBUG("control server stopped");
  http->reset();
  SY_LOG_INFO("stopped");
  return 0;
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  switchyard::ParseFlagsWithEnv(argc, argv);
  switchyard::InitLogging("switchyard-worker");
  if (absl::Status status = switchyard::SetLogLevel(absl::GetFlag(FLAGS_log_level)); !status.ok()) {
    SY_LOG_ERROR("{}", status.ToString());
    return 2;
  }
  return switchyard::Run();
}
