// ClusterService membership against fake WorkerServices on 127.0.0.1:0: ranks in registration
// order, the LoadRequest each worker receives, the KV block counts handed to on_ready, a failed
// Load, and a worker declared lost after the heartbeat timeout.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "coordinator/cluster_service.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

class FakeWorker final : public v1::WorkerService::Service {
 public:
  explicit FakeWorker(uint64_t num_kv_blocks, bool fail_load = false)
      : num_kv_blocks_(num_kv_blocks), fail_load_(fail_load) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeWorker() override { server_->Shutdown(); }

  grpc::Status Load(grpc::ServerContext*, const v1::LoadRequest* request,
                    v1::LoadResponse* response) override {
    absl::MutexLock lock(&mu_);
    load_ = *request;
    if (fail_load_) return grpc::Status(grpc::StatusCode::INTERNAL, "weights missing");
    response->set_num_kv_blocks(num_kv_blocks_);
    response->set_device("cpu");
    return grpc::Status::OK;
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  v1::LoadRequest load() {
    absl::MutexLock lock(&mu_);
    return load_;
  }

 private:
  uint64_t num_kv_blocks_;
  bool fail_load_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  v1::LoadRequest load_ ABSL_GUARDED_BY(mu_);
};

ClusterOptions Options(int32_t num_workers) {
  ClusterOptions options;
  options.num_workers = num_workers;
  options.model_dir = "/models/m";
  options.model_config.num_experts = 8;
  options.model_config.num_hidden_layers = 2;
  options.model_config.layer_is_moe = {true, true};
  options.block_size = 32;
  options.load_timeout = absl::Seconds(30);
  // Long enough that a loaded CI machine never starves the heartbeat loop below (every 50 ms).
  options.heartbeat_timeout = absl::Seconds(2);
  return options;
}

std::string Register(ClusterService& service, const std::string& address,
                     const std::string& backend = "cpu") {
  grpc::ServerContext context;
  v1::RegisterRequest request;
  request.set_worker_address(address);
  request.set_backend(backend);
  v1::RegisterResponse response;
  EXPECT_TRUE(service.Register(&context, &request, &response).ok());
  return response.worker_id();
}

TEST(ClusterMembershipTest, LoadsEveryWorkerThenDeclaresASilentOneLost) {
  FakeWorker first(100), second(200);
  absl::Notification ready, lost;
  std::vector<WorkerRecord> ready_workers;
  int32_t lost_rank = -1;
  ClusterService service(
      Options(2),
      [&](const std::vector<WorkerRecord>& workers) {
        ready_workers = workers;
        ready.Notify();
      },
      [&](const WorkerRecord& worker, absl::Status why) {
        EXPECT_EQ(why.code(), absl::StatusCode::kUnavailable);
        if (!lost.HasBeenNotified()) {
          lost_rank = worker.rank;
          lost.Notify();
        }
      });
  service.Start();
  // Registration order decides the ranks: `second` registers first.
  Register(service, second.address());
  const std::string first_id = Register(service, first.address());
  ASSERT_TRUE(ready.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(service.state(), ClusterState::kServing);
  ASSERT_EQ(ready_workers.size(), 2u);
  EXPECT_EQ(ready_workers[0].address, second.address());
  EXPECT_EQ(ready_workers[0].num_kv_blocks, 200u);
  EXPECT_EQ(ready_workers[1].num_kv_blocks, 100u);
  const v1::LoadRequest load = first.load();
  EXPECT_EQ(load.rank(), 1u);
  EXPECT_EQ(load.world_size(), 2u);
  EXPECT_EQ(load.model_dir(), "/models/m");
  EXPECT_EQ(load.block_size(), 32u);
  ASSERT_EQ(load.layer_placements_size(), 2);
  EXPECT_NE(load.layer_placements(0).find("4,5,6,7"), std::string::npos) << load.layer_placements(0);
  EXPECT_EQ(load.rendezvous_prefix(), second.load().rendezvous_prefix());
  EXPECT_EQ(load.data_plane(), "gloo");  // auto, with CPU workers
  EXPECT_EQ(service.data_plane(), "gloo");
  // Only `first` keeps sending heartbeats: rank 0 (`second`) goes silent and is declared lost.
  for (int i = 0; i < 200 && !lost.HasBeenNotified(); ++i) {
    grpc::ServerContext context;
    v1::HeartbeatRequest heartbeat;
    heartbeat.set_worker_id(first_id);
    v1::HeartbeatResponse response;
    EXPECT_TRUE(service.Heartbeat(&context, &heartbeat, &response).ok());
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(lost.HasBeenNotified());
  EXPECT_EQ(lost_rank, 0);
  service.Stop();
}

TEST(ClusterMembershipTest, AFailedLoadNeverServes) {
  FakeWorker good(100), bad(100, /*fail_load=*/true);
  bool ready_called = false;
  ClusterService service(
      Options(2), [&](const std::vector<WorkerRecord>&) { ready_called = true; },
      [](const WorkerRecord&, absl::Status) {});
  service.Start();
  Register(service, good.address());
  Register(service, bad.address());
  for (int i = 0; i < 600 && service.state() != ClusterState::kFailed; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(service.state(), ClusterState::kFailed);
  service.Stop();
  EXPECT_FALSE(ready_called);
  EXPECT_EQ(service.workers()[1].state, WorkerState::kFailed);
}

// --data_plane=nccl: a CPU worker is refused at Register, saying why; CUDA workers load over NCCL.
TEST(ClusterMembershipTest, NcclRefusesACpuWorkerAndLoadsCudaOnes) {
  FakeWorker first(100), second(100);
  absl::Notification ready;
  ClusterOptions options = Options(2);
  options.data_plane = "nccl";
  ClusterService service(
      options, [&](const std::vector<WorkerRecord>&) { ready.Notify(); },
      [](const WorkerRecord&, absl::Status) {});
  service.Start();
  grpc::ServerContext context;
  v1::RegisterRequest request;
  request.set_worker_address("127.0.0.1:1");
  request.set_backend("cpu");
  v1::RegisterResponse response;
  const grpc::Status refused = service.Register(&context, &request, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("needs the cuda backend"), std::string::npos)
      << refused.error_message();
  EXPECT_TRUE(service.workers().empty());
  Register(service, first.address(), "cuda");
  Register(service, second.address(), "cuda");
  ASSERT_TRUE(ready.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(first.load().data_plane(), "nccl");
  EXPECT_EQ(service.data_plane(), "nccl");
  service.Stop();
}

}  // namespace
}  // namespace switchyard
