// The client API over a real in-process gRPC server on 127.0.0.1:0: InferenceApi + RequestManager
// + a fake step executor that emits output token i = 100 + i. Checks the stream shape (deltas, then
// one Finished), rejections, Abort, client cancellation and deadlines.
#include "coordinator/api_service.h"

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

class CountingExecutor final : public StepExecutor {
 public:
  explicit CountingExecutor(absl::Duration step_time) : step_time_(step_time) {}
  absl::Status Execute(const StepPlan& plan, StepOutcome* outcome) override {
    outcome->Clear();
    outcome->result.step_id = plan.step_id;
    absl::SleepFor(step_time_);
    for (const WorkerStepPlan& worker : plan.workers) {
      for (const NewSequence& seq : worker.new_sequences) prompt_[seq.seq_id] = seq.num_prompt_tokens;
      for (const SequenceWork& work : worker.work) {
        if (!work.sample) continue;
        const int64_t idx = work.start_position + work.num_tokens - prompt_[work.seq_id];
        outcome->result.tokens.push_back(
            SampledTokenResult{work.seq_id, static_cast<int32_t>(100 + idx), -1.0f});
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::Duration step_time_;
  absl::flat_hash_map<int64_t, int64_t> prompt_;
};

class ApiServiceTest : public ::testing::Test {
 protected:
  void StartServer(absl::Duration step_time) {
    ModelContext model;
    model.vocab_size = 1000;
    model.max_model_len = 512;
    model.eos_token_ids = {1};
    RequestManagerOptions options;
    options.model = model;
    options.scheduler.max_model_len = 512;
    manager_ = std::make_unique<RequestManager>(options, nullptr);
    ASSERT_TRUE(manager_->Start({256}, std::make_unique<CountingExecutor>(step_time)).ok());
    cluster_ = std::make_unique<ClusterService>(
        ClusterOptions{}, [](const auto&) {}, [](const auto&, absl::Status) {});
    ApiOptions api_options;
    api_options.model_name = "test-model";
    api_options.model = model;
    api_ = std::make_unique<InferenceApi>(api_options, manager_.get(), cluster_.get(), nullptr);
    api_->set_state(v1::SERVING_STATE_SERVING);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(api_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::InferenceService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (manager_) manager_->Stop();
    if (server_) server_->Shutdown();
  }

  struct Stream {
    std::vector<int32_t> token_ids;
    std::optional<v1::Finished> finished;
    int num_messages_after_finished = 0;
    grpc::Status status;
  };

  Stream Generate(const v1::GenerateRequest& request, grpc::ClientContext* context) {
    Stream stream;
    auto reader = stub_->Generate(context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      if (stream.finished.has_value()) ++stream.num_messages_after_finished;
      if (response.has_delta()) {
        for (int32_t id : response.delta().token_ids()) stream.token_ids.push_back(id);
      } else {
        stream.finished = response.finished();
      }
    }
    stream.status = reader->Finish();
    return stream;
  }

  static v1::GenerateRequest Request(std::string id, uint32_t max_tokens) {
    v1::GenerateRequest request;
    request.set_request_id(std::move(id));
    request.mutable_token_ids()->add_ids(7);
    request.mutable_token_ids()->add_ids(8);
    request.mutable_stopping()->set_max_tokens(max_tokens);
    return request;
  }

  std::unique_ptr<RequestManager> manager_;
  std::unique_ptr<ClusterService> cluster_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::InferenceService::Stub> stub_;
};

TEST_F(ApiServiceTest, StreamsDeltasThenOneFinished) {
  StartServer(absl::ZeroDuration());
  grpc::ClientContext context;
  Stream stream = Generate(Request("a", 4), &context);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.token_ids, (std::vector<int32_t>{100, 101, 102, 103}));
  ASSERT_TRUE(stream.finished.has_value());
  EXPECT_EQ(stream.finished->reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(stream.finished->request_id(), "a");
  EXPECT_EQ(stream.finished->usage().prompt_tokens(), 2u);
  EXPECT_EQ(stream.finished->usage().completion_tokens(), 4u);
  EXPECT_EQ(stream.num_messages_after_finished, 0);
}

TEST_F(ApiServiceTest, InvalidRequestsAreRejectedWithTheField) {
  StartServer(absl::ZeroDuration());
  v1::GenerateRequest request = Request("b", 600);  // 2 + 600 > 512
  grpc::ClientContext context;
  Stream stream = Generate(request, &context);
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(stream.status.error_message().find("max_tokens"), std::string::npos);
  EXPECT_FALSE(stream.finished.has_value());
}

TEST_F(ApiServiceTest, NotServingIsUnavailable) {
  StartServer(absl::ZeroDuration());
  api_->set_state(v1::SERVING_STATE_DRAINING);
  grpc::ClientContext context;
  Stream stream = Generate(Request("c", 4), &context);
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ApiServiceTest, AbortEndsTheStreamWithAbortReason) {
  StartServer(absl::Milliseconds(5));
  std::thread aborter([this] {
    // Retry until the request is known to the manager.
    for (int i = 0; i < 2000; ++i) {
      grpc::ClientContext context;
      v1::AbortRequest request;
      request.set_request_id("long");
      v1::AbortResponse response;
      if (stub_->Abort(&context, request, &response).ok()) return;
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  grpc::ClientContext context;
  Stream stream = Generate(Request("long", 500), &context);
  aborter.join();
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_TRUE(stream.finished.has_value());
  EXPECT_EQ(stream.finished->reason(), v1::FINISH_REASON_ABORT);
  EXPECT_LT(stream.token_ids.size(), 500u);
  grpc::ClientContext abort_context;
  v1::AbortRequest again;
  again.set_request_id("long");
  v1::AbortResponse response;
  EXPECT_EQ(stub_->Abort(&abort_context, again, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiServiceTest, DeadlineEndsTheCallAndFreesTheRequest) {
  StartServer(absl::Milliseconds(5));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  Stream stream = Generate(Request("slow", 500), &context);
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  for (int i = 0; i < 1000 && manager_->num_live() > 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(manager_->num_live(), 0);
}

TEST_F(ApiServiceTest, ClientCancelFreesTheRequest) {
  StartServer(absl::Milliseconds(5));
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, Request("gone", 500));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 1000 && manager_->num_live() > 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(manager_->num_live(), 0);
}

TEST_F(ApiServiceTest, ModelInfoReportsTheContextLength) {
  StartServer(absl::ZeroDuration());
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.max_context_length(), 512u);  // ModelContext::max_model_len
}

TEST_F(ApiServiceTest, ServerInfoReportsTheStateAndEachWorker) {
  StartServer(absl::ZeroDuration());
  {
    grpc::ServerContext server_context;
    v1::RegisterRequest request;
    request.set_worker_address("10.0.0.7:50061");
    request.set_backend("cuda");
    v1::RegisterResponse response;
    ASSERT_TRUE(cluster_->Register(&server_context, &request, &response).ok());
  }
  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.state(), v1::SERVING_STATE_SERVING);
  EXPECT_EQ(info.model_name(), "test-model");
  ASSERT_EQ(info.workers_size(), 1);
  EXPECT_EQ(info.workers(0).address(), "10.0.0.7:50061");
  EXPECT_EQ(info.workers(0).state(), "registered");
  EXPECT_EQ(info.workers(0).device(), "cuda");
  EXPECT_EQ(info.data_plane(), "");  // nothing loaded yet
}

}  // namespace
}  // namespace switchyard
