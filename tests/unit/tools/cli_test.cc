// Tests of the `switchyard` CLI (tools/cli_*) against a fake InferenceService on 127.0.0.1: the
// library pieces (statistics, id lists, the status table, bench) and the binary's output and exit
// codes.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tools/cli_bench.h"
#include "tools/cli_util.h"

namespace switchyard::cli {
namespace {

constexpr uint32_t kVocab = 100;

// Streams, per request, max_tokens tokens (default 3) in deltas of one: token i is
// (first prompt id + i) % vocab, text "<id>". The prompt {99} gets RESOURCE_EXHAUSTED.
class FakeService final : public v1::InferenceService::Service {
 public:
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*request);
    }
    if (!request->has_token_ids() || request->token_ids().ids_size() == 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "fake: token_ids only");
    }
    const int first = request->token_ids().ids(0);
    if (first == 99 && request->token_ids().ids_size() == 1) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "fake: queue full");
    }
    const uint32_t n = request->stopping().has_max_tokens() ? request->stopping().max_tokens() : 3;
    for (uint32_t i = 0; i < n; ++i) {
      v1::GenerateResponse delta;
      const int id = static_cast<int>((first + i) % kVocab);
      delta.mutable_delta()->add_token_ids(id);
      delta.mutable_delta()->set_text(absl::StrCat("<", id, ">"));
      writer->Write(delta);
    }
    v1::GenerateResponse done;
    done.mutable_finished()->set_reason(v1::FINISH_REASON_LENGTH);
    done.mutable_finished()->mutable_usage()->set_prompt_tokens(request->token_ids().ids_size());
    done.mutable_finished()->mutable_usage()->set_completion_tokens(n);
    done.mutable_finished()->set_request_id("r1");
    writer->Write(done);
    return grpc::Status::OK;
  }
  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    info->set_model_name("fake");
    info->set_vocab_size(kVocab);
    return grpc::Status::OK;
  }
  grpc::Status GetServerInfo(grpc::ServerContext*, const v1::GetServerInfoRequest*,
                             v1::ServerInfo* info) override {
    *info = TwoWorkerInfo();
    return grpc::Status::OK;
  }

  static v1::ServerInfo TwoWorkerInfo() {
    v1::ServerInfo info;
    info.set_model_name("fake");
    info.set_state(v1::SERVING_STATE_SERVING);
    info.set_num_workers_expected(2);
    for (uint32_t rank = 0; rank < 2; ++rank) {
      v1::WorkerInfo* w = info.add_workers();
      w->set_rank(rank);
      w->set_address(absl::StrCat("127.0.0.1:5006", rank));
      w->set_kv_blocks_used(3 + rank);
      w->set_kv_blocks_total(512);
      w->set_tokens_routed(1000 + rank);
      w->set_device("cuda");
    }
    info.set_data_plane("nccl");
    info.mutable_placement()->set_version(7);
    info.mutable_placement()->add_experts_per_rank("0-3");
    info.mutable_placement()->add_experts_per_rank("4-7");
    return info;
  }

  std::vector<v1::GenerateRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = absl::StrCat("127.0.0.1:", port_);
  }
  void TearDown() override { server_->Shutdown(); }

  // Runs the binary; returns its exit status and fills stdout.
  int RunCli(const std::string& args, std::string& out) {
    const char* bin_dir = std::getenv("SWITCHYARD_BIN_DIR");
    const std::string cmd = absl::StrCat(bin_dir ? bin_dir : ".", "/switchyard ", args,
                                         " --address ", address_, " 2>/dev/null");
    FILE* pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) return -1;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
    const int rc = pclose(pipe);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
};

TEST(SummarizeTest, PercentilesInterpolateBetweenRanks) {
  // 1..11: p50 = 6, p90 = 10, p99 = 10.9 (numpy's linear method), mean 6.
  std::vector<double> values;
  for (int i = 11; i >= 1; --i) values.push_back(i);
  Summary s = Summarize(values);
  EXPECT_EQ(s.count, 11u);
  EXPECT_DOUBLE_EQ(s.mean, 6);
  EXPECT_DOUBLE_EQ(s.p50, 6);
  EXPECT_DOUBLE_EQ(s.p90, 10);
  EXPECT_NEAR(s.p99, 10.9, 1e-9);
  EXPECT_DOUBLE_EQ(s.max, 11);
  EXPECT_EQ(Summarize({}).count, 0u);
}

TEST(ParseIdListTest, ParsesAndRejects) {
  auto ids = ParseIdList(" 1, 2,30 ");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 2, 30}));
  EXPECT_TRUE(ParseIdList("")->empty());
  EXPECT_EQ(ParseIdList("1,,2").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseIdList("1,a").status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Status bad = ParseIdList("4, 5,x7", "--stop-token-ids").status();
  EXPECT_TRUE(absl::StrContains(bad.message(), "--stop-token-ids")) << bad;
  EXPECT_TRUE(absl::StrContains(bad.message(), "item 2 is \"x7\"")) << bad;
  EXPECT_FALSE(ParseIdList("99999999999").ok());  // beyond int32
}

TEST(WriteFileAtomicallyTest, ReplacesWholeFilesAndNamesFailures) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    ("cli_atomic_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "ports.json").string();
  ASSERT_TRUE(WriteFileAtomically(path, "first, and longer\n").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "second\n").ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), "second\n");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const absl::Status missing = WriteFileAtomically((dir / "no" / "such" / "f").string(), "x");
  EXPECT_EQ(missing.code(), absl::StatusCode::kInternal) << missing;
  EXPECT_TRUE(absl::StrContains(missing.message(), "no/such/f")) << missing;
  std::filesystem::remove_all(dir);
}

TEST(FormatServerInfoTest, ShowsEveryWorkerRow) {
  const std::string table = FormatServerInfo(FakeService::TwoWorkerInfo());
  EXPECT_NE(table.find("SERVING, workers 2/2"), std::string::npos) << table;
  EXPECT_NE(table.find("version 7"), std::string::npos);
  EXPECT_NE(table.find("127.0.0.1:50061"), std::string::npos);
  EXPECT_NE(table.find("4/512"), std::string::npos);
  EXPECT_NE(table.find("4-7"), std::string::npos);
  EXPECT_NE(table.find("data plane nccl"), std::string::npos) << table;
  EXPECT_NE(table.find("cuda"), std::string::npos) << table;
}

TEST_F(CliTest, BenchSendsExactLengthsAndCountsTokens) {
  auto stub = v1::InferenceService::NewStub(NewChannel(address_));
  BenchOptions o;
  o.num_requests = 20;
  o.concurrency = 4;
  o.input_len = 10;
  o.output_len = 5;
  auto report = RunBench(*stub, o, address_);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->num_completed, 20);
  EXPECT_EQ(report->num_failed, 0);
  EXPECT_EQ(report->total_input_tokens, 200);
  EXPECT_EQ(report->total_output_tokens, 100);
  EXPECT_EQ(report->ttft_s.count, 20u);
  EXPECT_EQ(report->itl_s.count, 80u);  // 4 gaps per 5-token stream
  for (const v1::GenerateRequest& r : service_.requests()) {
    EXPECT_TRUE(r.stopping().ignore_eos());
    EXPECT_EQ(r.stopping().max_tokens(), 5u);
    for (int id : r.token_ids().ids()) EXPECT_LT(id, static_cast<int>(kVocab));
  }
  auto json = nlohmann::json::parse(BenchReportJson(*report));
  EXPECT_EQ(json["completed"], 20);
  EXPECT_EQ(json["total_output_tokens"], 100);
}

TEST_F(CliTest, BenchRangeRatioSpreadsLengths) {
  auto stub = v1::InferenceService::NewStub(NewChannel(address_));
  BenchOptions o;
  o.num_requests = 30;
  o.request_rate = 1000;  // open loop, Poisson arrivals
  o.concurrency = 30;
  o.input_len = 10;
  o.output_len = 4;
  o.range_ratio = 0.5;
  auto report = RunBench(*stub, o, address_);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->num_completed, 30);
  uint32_t min_len = 1000, max_len = 0;
  for (const v1::GenerateRequest& r : service_.requests()) {
    const uint32_t len = r.token_ids().ids_size();
    min_len = std::min(min_len, len);
    max_len = std::max(max_len, len);
    EXPECT_GE(r.stopping().max_tokens(), 2u);
    EXPECT_LE(r.stopping().max_tokens(), 6u);
  }
  EXPECT_GE(min_len, 5u);
  EXPECT_LE(max_len, 15u);
  EXPECT_LT(min_len, max_len);  // 30 draws from 11 values: some spread
}

TEST_F(CliTest, GenerateStreamsTextAndJson) {
  std::string out;
  EXPECT_EQ(RunCli("generate --prompt_ids 7,8 --max_tokens 3 --temperature 0", out), 0);
  EXPECT_EQ(out, "<7><8><9>\n");
  ASSERT_EQ(service_.requests().size(), 1u);
  const v1::GenerateRequest r = service_.requests()[0];
  EXPECT_TRUE(r.sampling().has_temperature());
  EXPECT_EQ(r.sampling().temperature(), 0.0f);
  EXPECT_FALSE(r.sampling().has_top_p());  // unset flags keep the server default

  out.clear();
  EXPECT_EQ(RunCli("generate --prompt-ids 7 --max-tokens 2 --json", out), 0);
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  for (size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(nlohmann::json::parse(out.substr(start, nl - start)));
  }
  ASSERT_EQ(lines.size(), 3u) << out;
  EXPECT_EQ(lines[1]["delta"]["token_ids"][0], 8);
  EXPECT_EQ(lines[2]["finished"]["reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(lines[2]["finished"]["usage"]["completion_tokens"], 2);
}

TEST_F(CliTest, ExitCodesFollowTheGrpcStatus) {
  std::string out;
  EXPECT_EQ(RunCli("generate --prompt_ids 99", out), 8);  // RESOURCE_EXHAUSTED
  EXPECT_EQ(RunCli("generate --prompt 'text'", out), 3);  // INVALID_ARGUMENT from the fake
  EXPECT_EQ(RunCli("generate", out), kExitUsage);
  EXPECT_EQ(RunCli("generate --prompt_ids 1,x", out), kExitUsage);
  EXPECT_EQ(RunCli("nonsense", out), kExitUsage);
  out.clear();
  EXPECT_EQ(RunCli("status --json", out), 0);
  auto info = nlohmann::json::parse(out);
  EXPECT_EQ(info["workers"].size(), 2u);
  EXPECT_EQ(info["workers"][1]["kv_blocks_used"], "4");  // uint64 is a JSON string
}

}  // namespace
}  // namespace switchyard::cli
