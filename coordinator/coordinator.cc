#include "coordinator/coordinator.h"

#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli_support.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "common/tokenizer.h"
#include "coordinator/api_service.h"
#include "coordinator/cluster_service.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/request_manager.h"
#include "coordinator/step_executor.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

constexpr char kServiceName[] = "switchyard.v1.InferenceService";
constexpr char kVersion[] = "0.1.0";

std::vector<int32_t> EosIds(const ModelConfig& config) {
  std::vector<int32_t> ids;
  for (int64_t id : config.eos_token_ids) ids.push_back(static_cast<int32_t>(id));
  return ids;
}

std::string DefaultModelName(const std::string& model_dir) {
  std::filesystem::path path(model_dir);
  while (!path.empty() && path.filename().empty()) path = path.parent_path();  // trailing '/'
  return path.filename().string();
}

class CoordinatorImpl final : public Coordinator {
 public:
  explicit CoordinatorImpl(CoordinatorOptions options) : options_(std::move(options)) {}
  ~CoordinatorImpl() override { Shutdown(); }

  absl::Status Init();
  void Drain() override;
  int grpc_port() const override { return grpc_port_; }
  int control_port() const override { return control_port_; }
  int http_port() const override { return http_port_; }

 private:
  absl::Status LoadModel();
  absl::Status StartServers();
  absl::Status WritePortFile() const;
  void OnReady(const std::vector<WorkerRecord>& workers);
  void OnLost(const WorkerRecord& worker, const absl::Status& why);
  void SetHealth(bool ready);
  absl::Status Ready() const;
  void Shutdown();

  const CoordinatorOptions options_;
  std::string model_name_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int64_t max_model_len_ = 0;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<metrics::CoordinatorMetrics> metrics_;
  std::unique_ptr<MetricsObserver> observer_;
  std::unique_ptr<RequestManager> manager_;
  std::unique_ptr<ClusterService> cluster_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<grpc::Server> control_server_;
  std::unique_ptr<metrics::MetricsHttpServer> http_server_;
  int grpc_port_ = 0;
  int control_port_ = 0;
  int http_port_ = 0;
  bool shut_down_ = false;
};

absl::Status CoordinatorImpl::LoadModel() {
  SY_ASSIGN_OR_RETURN(config_, LoadModelConfig(options_.model_dir));
  const std::filesystem::path tokenizer_path =
      std::filesystem::path(options_.model_dir) / "tokenizer.json";
  if (std::filesystem::exists(tokenizer_path)) {
    SY_ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromFile(tokenizer_path));
  } else {
    SY_LOG_WARN("{} not found: only token_ids input, no text output", tokenizer_path.string());
  }
  max_model_len_ =
      options_.max_model_len > 0 ? options_.max_model_len : config_.max_position_embeddings;
  model_name_ = options_.served_model_name.empty() ? DefaultModelName(options_.model_dir)
                                                   : options_.served_model_name;
  return absl::OkStatus();
}

absl::Status CoordinatorImpl::Init() {
  SY_RETURN_IF_ERROR(LoadModel());
  registry_ = std::make_shared<prometheus::Registry>();
  metrics_ = std::make_unique<metrics::CoordinatorMetrics>(*registry_, model_name_,
                                                           options_.num_workers);
  metrics_->cluster_workers_expected.Set(options_.num_workers);
  metrics_->request_queue_capacity.Set(static_cast<double>(options_.max_queued_requests));
  observer_ = std::make_unique<MetricsObserver>(metrics_.get());

  ModelContext model;
  model.tokenizer = tokenizer_.get();
  model.vocab_size = config_.vocab_size;
  model.max_model_len = max_model_len_;
  model.eos_token_ids = EosIds(config_);
  RequestManagerOptions manager_options;
  manager_options.model = model;
  SchedulerOptions& sched = manager_options.scheduler;
  sched.block_size = options_.block_size;
  sched.max_model_len = max_model_len_;
  sched.max_num_batched_tokens = options_.max_num_batched_tokens;
  sched.max_num_seqs = options_.max_num_seqs;
  sched.max_waiting = options_.max_queued_requests;
  manager_ = std::make_unique<RequestManager>(manager_options, observer_.get());

  ClusterOptions cluster_options;
  cluster_options.num_workers = options_.num_workers;
  cluster_options.model_dir = std::filesystem::absolute(options_.model_dir).string();
  cluster_options.model_config = config_;
  cluster_options.redundant_experts = options_.redundant_experts;
  cluster_options.block_size = options_.block_size;
  cluster_options.comm_timeout_ms = options_.comm_timeout_ms;
  cluster_options.kv_cache_bytes = options_.kv_cache_bytes;
  cluster_options.data_plane = options_.data_plane;
  cluster_options.load_timeout = options_.load_timeout;
  cluster_options.heartbeat_timeout = options_.heartbeat_timeout;
  // Validate the placement now: a bad --redundant_experts should fail at startup, not at Load.
  std::vector<std::string> texts;
  PlacementSummary summary;
  SY_RETURN_IF_ERROR(ComputePlacements(config_, options_.num_workers, options_.redundant_experts,
                                       &texts, &summary));
  cluster_ = std::make_unique<ClusterService>(
      cluster_options, [this](const std::vector<WorkerRecord>& w) { OnReady(w); },
      [this](const WorkerRecord& w, absl::Status why) { OnLost(w, why); });
  cluster_->set_rpc_error_callback([m = metrics_.get()](const char* method, absl::StatusCode code) {
    m->ControlRpcErrors(method, code).Increment();
  });

  ApiOptions api_options;
  api_options.model_name = model_name_;
  api_options.version = kVersion;
  api_options.model_config = config_;
  api_options.model = model;
  api_options.num_workers = options_.num_workers;
  api_ = std::make_unique<InferenceApi>(api_options, manager_.get(), cluster_.get(),
                                        observer_.get());
  SY_RETURN_IF_ERROR(StartServers());
  SY_LOG_INFO("listening: grpc={}:{} control={}:{} http={}:{}", options_.host, grpc_port_,
              options_.host, control_port_, options_.host, http_port_);
  SY_RETURN_IF_ERROR(WritePortFile());
  SY_LOG_INFO("model {} ({}), context {} tokens, waiting for {} worker(s)", model_name_,
              config_.model_type, max_model_len_, options_.num_workers);
  cluster_->Start();
  return absl::OkStatus();
}

absl::Status CoordinatorImpl::StartServers() {
  grpc::ServerBuilder control_builder;
  control_builder.AddListeningPort(absl::StrCat(options_.host, ":", options_.control_port),
                                   grpc::InsecureServerCredentials(), &control_port_);
  control_builder.RegisterService(cluster_.get());
  control_server_ = control_builder.BuildAndStart();
  if (control_server_ == nullptr || control_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on control port ", options_.host,
                                               ":", options_.control_port));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(options_.host, ":", options_.grpc_port),
                           grpc::InsecureServerCredentials(), &grpc_port_);
  builder.RegisterService(api_.get());
  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on client port ", options_.host,
                                               ":", options_.grpc_port));
  }
  SetHealth(false);
  metrics::HttpServerOptions http_options;
  http_options.host = options_.host;
  http_options.port = options_.http_port;
  SY_ASSIGN_OR_RETURN(http_server_, metrics::MetricsHttpServer::Start(
                                        http_options, registry_, [this] { return Ready(); }));
  http_port_ = http_server_->bound_port();
  return absl::OkStatus();
}

absl::Status CoordinatorImpl::WritePortFile() const {
  if (options_.port_file.empty()) return absl::OkStatus();
  const nlohmann::json ports = {{"grpc", grpc_port_}, {"control", control_port_}, {"http", http_port_}};
  return WriteFileAtomically(options_.port_file, ports.dump() + "\n");
}

void CoordinatorImpl::OnReady(const std::vector<WorkerRecord>& workers) {
  std::vector<int64_t> blocks;
  std::vector<std::shared_ptr<v1::WorkerService::Stub>> stubs;
  for (const WorkerRecord& worker : workers) {
    blocks.push_back(static_cast<int64_t>(worker.num_kv_blocks));
    stubs.push_back(worker.stub);
    metrics_->WorkerUp(worker.rank).Set(1);
  }
  metrics::CoordinatorMetrics* m = metrics_.get();
  absl::Status status = manager_->Start(
      blocks, std::make_unique<GrpcStepExecutor>(
                  std::move(stubs), options_.step_timeout,
                  [m](absl::StatusCode code) { m->ControlRpcErrors("ExecuteStep", code).Increment(); }));
  if (!status.ok()) {
    SY_LOG_ERROR("cannot start serving: {}", status.ToString());
    return;
  }
  metrics_->cluster_workers_ready.Set(static_cast<double>(workers.size()));
  metrics_->moe_placement_version.Set(static_cast<double>(cluster_->placement().version));
  if (api_->state() == v1::SERVING_STATE_STARTING) {
    api_->set_state(v1::SERVING_STATE_SERVING);
    SetHealth(true);
  }
  SY_LOG_INFO("serving: {} worker(s) ready", workers.size());
}

void CoordinatorImpl::OnLost(const WorkerRecord& worker, const absl::Status& why) {
  metrics_->WorkerUp(worker.rank).Set(0);
  metrics_->cluster_workers_ready.Set(cluster_->num_ready());
  if (api_->state() == v1::SERVING_STATE_SERVING) {
    api_->set_state(v1::SERVING_STATE_STARTING);
    SetHealth(false);
  }
  manager_->FailAll(why, /*stop_serving=*/true);
}

void CoordinatorImpl::SetHealth(bool ready) {
  grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", api_->state() != v1::SERVING_STATE_DRAINING);
  health->SetServingStatus(kServiceName, ready);
}

absl::Status CoordinatorImpl::Ready() const {
  switch (api_->state()) {
    case v1::SERVING_STATE_SERVING: return absl::OkStatus();
    case v1::SERVING_STATE_DRAINING: return absl::UnavailableError("draining");
    default: break;
  }
  const ClusterState state = cluster_->state();
  return absl::UnavailableError(absl::StrCat("cluster ", ClusterStateName(state), ": ",
                                             cluster_->num_ready(), "/", options_.num_workers,
                                             " workers ready"));
}

void CoordinatorImpl::Drain() {
  SY_LOG_INFO("draining: {} request(s) live, up to {}", manager_->num_live(),
              absl::FormatDuration(options_.drain_timeout));
  api_->set_state(v1::SERVING_STATE_DRAINING);
  SetHealth(false);
  manager_->BeginDrain();
  const absl::Time deadline = absl::Now() + options_.drain_timeout;
  while (manager_->num_live() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  if (manager_->num_live() > 0) {
    SY_LOG_WARN("drain timeout: failing {} request(s) with UNAVAILABLE", manager_->num_live());
  }
  Shutdown();
}

void CoordinatorImpl::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (manager_ != nullptr) manager_->Stop(absl::UnavailableError("the server is shutting down"));
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
  if (grpc_server_ != nullptr) grpc_server_->Shutdown(deadline);
  if (cluster_ != nullptr) cluster_->Stop();
  if (control_server_ != nullptr) control_server_->Shutdown(deadline);
  http_server_.reset();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(
    const CoordinatorOptions& options) {
  auto coordinator = std::make_unique<CoordinatorImpl>(options);
  SY_RETURN_IF_ERROR(coordinator->Init());
  return coordinator;
}

}  // namespace switchyard
