// The worker's control plane in one process: two WorkerControlServices on gRPC port 0, each with
// its WorkerRuntime joining a Gloo group through ClusterStore against a fake ClusterService (an
// in-memory key-value store with StoreGet's wait semantics). A client loads both ranks at once and
// runs steps; the greedy tokens equal a single Engine's. Also: ClusterStore's errors are
// gloo::IoException with a "timed out" message, and calls after Stop fail with UNAVAILABLE.
#include <algorithm>
#include <map>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "gloo/common/error.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/ep_engine_test_util.h"
#include "worker/cluster_link.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/control_service.h"
#include "worker/store_client.h"

namespace switchyard {
namespace {

// StoreSet / StoreGet as control.proto describes them; Register hands out "w<n>"; Heartbeat
// answers NOT_FOUND for an id it was told to forget (a restarted coordinator).
class FakeClusterService final : public v1::ClusterService::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    absl::MutexLock lock(&mu_);
    registrations_.push_back(*request);
    response->set_worker_id("w" + std::to_string(registrations_.size()));
    response->set_expected_workers(1);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse*) override {
    absl::MutexLock lock(&mu_);
    ++num_heartbeats_;
    if (request->worker_id() == forgotten_)
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "who?");
    return grpc::Status::OK;
  }
  void Forget(const std::string& worker_id) {
    absl::MutexLock lock(&mu_);
    forgotten_ = worker_id;
  }
  // Waits (up to 20 s) until `pred` holds over (registrations, heartbeats).
  bool AwaitCounts(std::function<bool(size_t, int)> pred) {
    absl::MutexLock lock(&mu_);
    auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return pred(registrations_.size(), num_heartbeats_);
    };
    return mu_.AwaitWithTimeout(absl::Condition(&holds), absl::Seconds(20));
  }
  v1::RegisterRequest registration(size_t idx) {
    absl::MutexLock lock(&mu_);
    return registrations_.at(idx);
  }
  grpc::Status StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* request,
                        v1::StoreSetResponse*) override {
    absl::MutexLock lock(&mu_);
    values_[request->key()] = request->value();
    return grpc::Status::OK;
  }
  grpc::Status StoreGet(grpc::ServerContext*, const v1::StoreGetRequest* request,
                        v1::StoreGetResponse* response) override {
    absl::MutexLock lock(&mu_);
    auto all_present = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return std::all_of(request->keys().begin(), request->keys().end(),
                         [&](const std::string& key) { return values_.contains(key); });
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&all_present),
                              absl::Milliseconds(request->timeout_ms()))) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "keys missing");
    }
    for (const std::string& key : request->keys()) response->add_values(values_.at(key));
    return grpc::Status::OK;
  }
  std::vector<std::string> Keys() {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> keys;
    for (const auto& [key, value] : values_) keys.push_back(key);
    return keys;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::RegisterRequest> registrations_ ABSL_GUARDED_BY(mu_);
  int num_heartbeats_ ABSL_GUARDED_BY(mu_) = 0;
  std::string forgotten_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<grpc::Server> StartServer(grpc::Service* service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

std::shared_ptr<grpc::Channel> Channel(int port) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureChannelCredentials());
}

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_server_ = StartServer(&store_service_, &store_port_);
    ASSERT_NE(store_server_, nullptr);
  }
  std::shared_ptr<ClusterStore> Store(absl::Duration timeout) {
    ClusterStoreOptions options;
    options.default_timeout = timeout;
    return std::make_shared<ClusterStore>(Channel(store_port_), "fake-coordinator", options);
  }

  FakeClusterService store_service_;
  std::unique_ptr<grpc::Server> store_server_;
  int store_port_ = 0;
};

TEST_F(WorkerServiceTest, StoreSetGetWaitAndTimeouts) {
  auto store = Store(absl::Seconds(5));
  store->set("a", {'x', 'y'});
  EXPECT_EQ(store->get("a"), (std::vector<char>{'x', 'y'}));
  std::thread late([&] {
    absl::SleepFor(absl::Milliseconds(100));
    Store(absl::Seconds(5))->set("b", {'1'});
  });
  store->wait({"a", "b"}, std::chrono::milliseconds(5000));
  late.join();
  try {
    store->wait({"never"}, std::chrono::milliseconds(200));
    ADD_FAILURE() << "wait for a missing key returned";
  } catch (const gloo::IoException& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("never"), std::string::npos) << e.what();
  }
  // A cancelled store gives up on a wait in progress within one slice.
  ClusterStoreOptions cancellable;
  cancellable.default_timeout = absl::Seconds(60);
  cancellable.wait_slice = absl::Milliseconds(50);
  cancellable.cancelled = std::make_shared<std::atomic<bool>>(false);
  ClusterStore stopping(Channel(store_port_), "fake-coordinator", cancellable);
  std::thread cancel([&] {
    absl::SleepFor(absl::Milliseconds(100));
    *cancellable.cancelled = true;
  });
  try {
    stopping.wait({"never"});
    ADD_FAILURE() << "a cancelled wait returned";
  } catch (const gloo::IoException& e) {
    EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos) << e.what();
  }
  cancel.join();
  // An unreachable coordinator: an IoException after the bounded retries, not a hang.
  ClusterStoreOptions options;
  options.default_timeout = absl::Milliseconds(500);
  ClusterStore dead(grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()),
                    "127.0.0.1:1", options);
  EXPECT_THROW(dead.set("k", {'v'}), gloo::IoException);
  // Cancelled while retrying an unreachable coordinator: gives up at the next try, not at the
  // 60 s deadline.
  ClusterStoreOptions retrying;
  retrying.default_timeout = absl::Seconds(60);
  retrying.cancelled = std::make_shared<std::atomic<bool>>(false);
  ClusterStore unreachable(grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()),
                           "127.0.0.1:1", retrying);
  std::thread stop([&] {
    absl::SleepFor(absl::Milliseconds(100));
    *retrying.cancelled = true;
  });
  try {
    unreachable.set("k", {'v'});
    ADD_FAILURE() << "a set to an unreachable coordinator returned";
  } catch (const gloo::IoException& e) {
    EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos) << e.what();
  }
  stop.join();
}

TEST_F(WorkerServiceTest, ClusterLinkRegistersHeartbeatsAndReregisters) {
  ClusterLinkOptions options;
  options.heartbeat_interval = absl::Milliseconds(10);
  ClusterLink link(Channel(store_port_), "fake-coordinator", options);
  EXPECT_FALSE(link.registered());
  v1::RegisterRequest registration;
  registration.set_worker_address("127.0.0.1:1234");
  registration.set_backend("cpu");
  link.Start(registration);
  ASSERT_TRUE(
      store_service_.AwaitCounts([](size_t regs, int beats) { return regs == 1 && beats >= 2; }));
  EXPECT_TRUE(link.registered());
  EXPECT_EQ(link.worker_id(), "w1");
  EXPECT_EQ(store_service_.registration(0).worker_address(), "127.0.0.1:1234");
  store_service_.Forget("w1");
  ASSERT_TRUE(store_service_.AwaitCounts([](size_t regs, int) { return regs == 2; }));
  link.Stop();
  EXPECT_EQ(link.worker_id(), "w2");
}

TEST_F(WorkerServiceTest, TwoRanksOverGlooServeSteps) {
  const std::filesystem::path model_dir = testing::MakeEpTestModel("mixtral");
  constexpr int kWorldSize = 2;
  std::vector<std::unique_ptr<WorkerRuntime>> runtimes;
  std::vector<std::unique_ptr<WorkerControlService>> services;
  std::vector<std::unique_ptr<grpc::Server>> servers;
  std::vector<std::unique_ptr<v1::WorkerService::Stub>> stubs;
  for (int rank = 0; rank < kWorldSize; ++rank) {
    WorkerRuntimeOptions options;
    options.make_communicator = [this](const v1::LoadRequest& request) {
      GlooCommunicatorOptions gloo;
      gloo.store_prefix = request.rendezvous_prefix();
      gloo.comm.timeout = absl::Milliseconds(request.comm_timeout_ms());
      gloo.comm.connect_timeout = absl::Seconds(20);
      return CreateGlooCommunicator(Store(absl::Seconds(20)), static_cast<int>(request.rank()),
                                    static_cast<int>(request.world_size()), gloo);
    };
    runtimes.push_back(std::make_unique<WorkerRuntime>(options));
    services.push_back(
        std::make_unique<WorkerControlService>(runtimes.back().get(), WorkerServiceHooks{}));
    int port = 0;
    servers.push_back(StartServer(services.back().get(), &port));
    ASSERT_NE(servers.back(), nullptr);
    stubs.push_back(v1::WorkerService::NewStub(Channel(port)));
  }
  // Calls every rank at once, as the coordinator does.
  auto on_every_rank = [&](auto call) {
    std::vector<grpc::Status> statuses(kWorldSize);
    std::vector<std::thread> threads;
    for (int rank = 0; rank < kWorldSize; ++rank) {
      threads.emplace_back([&, rank] {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        statuses[rank] = call(rank, &context);
      });
    }
    for (std::thread& thread : threads) thread.join();
    return statuses;
  };
  std::vector<v1::LoadResponse> loads(kWorldSize);
  for (const grpc::Status& status : on_every_rank([&](int rank, grpc::ClientContext*context) {
         v1::LoadRequest request;
         request.set_rank(rank);
         request.set_world_size(kWorldSize);
         request.set_model_dir(model_dir.string());
         request.set_block_size(4);
         request.set_kv_cache_bytes(1 << 20);
         request.set_rendezvous_prefix("switchyard/test/gen1");
         request.set_data_plane("gloo");
         request.set_comm_timeout_ms(20000);
         return stubs[rank]->Load(context, request, &loads[rank]);
       })) {
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_GT(loads[0].num_kv_blocks(), 0u);
  EXPECT_EQ(loads[0].device(), "cpu");
  // Gloo's keys went through ClusterStore under the rendezvous prefix.
  const std::vector<std::string> keys = store_service_.Keys();
  ASSERT_FALSE(keys.empty());
  for (const std::string& key : keys) EXPECT_EQ(key.rfind("switchyard/test/gen1/", 0), 0u) << key;

  // Rank 0 runs a prompt and three decodes; rank 1 is idle throughout (ForwardIdle each step).
  const std::vector<int32_t> prompt = {9, 8, 7, 6, 5};
  std::vector<int32_t> got;
  for (int64_t step = 0; step < 4; ++step) {
    std::vector<v1::StepRequest> requests(kWorldSize);
    for (v1::StepRequest& request : requests) request.set_step_id(step);
    v1::StepRequest& plan = requests[0];
    v1::SequenceWork* work = plan.add_work();
    work->set_seq_id(1);
    work->set_sample(true);
    if (step == 0) {
      v1::NewSequence* seq = plan.add_new_sequences();
      seq->set_seq_id(1);
      seq->set_num_prompt_tokens(5);
      seq->mutable_sampling()->set_top_p(1.0f);
      seq->mutable_sampling()->set_repetition_penalty(1.0f);
      seq->add_block_table(0);
      seq->add_block_table(1);
      plan.mutable_token_ids()->Add(prompt.begin(), prompt.end());
    } else {
      work->set_start_position(4 + step);
      plan.add_token_ids(got.back());
    }
    work->set_num_tokens(plan.token_ids_size());
    std::vector<v1::StepResponse> responses(kWorldSize);
    for (const grpc::Status& status : on_every_rank([&](int rank, grpc::ClientContext*context) {
           return stubs[rank]->ExecuteStep(context, requests[rank], &responses[rank]);
         })) {
      ASSERT_TRUE(status.ok()) << "step " << step << ": " << status.error_message();
    }
    ASSERT_EQ(responses[0].tokens_size(), 1);
    EXPECT_EQ(responses[0].step_id(), step);
    EXPECT_EQ(responses[1].tokens_size(), 0);
    got.push_back(responses[0].tokens(0).token_id());
  }

  // The single engine with a plain argmax, sequence alone.
  auto reference = testing::LoadEpTestEngine(model_dir);
  ASSERT_TRUE(reference.ok()) << reference.status();
  std::vector<int32_t> run = prompt, blocks = {0, 1, 2};
  std::vector<int32_t> want;
  for (int64_t start = 0; want.size() < got.size(); start = static_cast<int64_t>(run.size()) - 1) {
    const BatchEntry entry{std::span<const int32_t>(run).subspan(start), start, blocks, false};
    ForwardOutput out;
    ASSERT_TRUE((*reference)->Forward(std::span<const BatchEntry>(&entry, 1), &out).ok());
    const float* logits = out.logits.data() + out.first_row[0] * out.vocab_size;
    want.push_back(
        static_cast<int32_t>(std::max_element(logits, logits + out.vocab_size) - logits));
    run.push_back(want.back());
  }
  EXPECT_EQ(got, want);

  // After Stop, calls are refused rather than left hanging.
  services[0]->Stop();
  grpc::ClientContext context;
  v1::StepResponse response;
  EXPECT_EQ(stubs[0]->ExecuteStep(&context, v1::StepRequest(), &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  services[1]->Stop();
  for (auto& server : servers) server->Shutdown();
}

}  // namespace
}  // namespace switchyard
