// Tests of common/metrics: the HTTP server's /metrics and /health over a real socket, and the
// exported families against the contract checker (tests/helm/check_scrape.py).
#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace switchyard::metrics {
namespace {

struct HttpReply {
  int status = 0;
  std::string body;
};

// A minimal HTTP/1.0 GET on 127.0.0.1, independent of the server's library.
HttpReply HttpGet(int port, const std::string& path) {
  HttpReply reply;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return reply;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return reply;
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return reply;
  }
  std::string raw;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) raw.append(buf, n);
  close(fd);
  // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"
  const size_t space = raw.find(' ');
  const size_t header_end = raw.find("\r\n\r\n");
  if (space == std::string::npos || header_end == std::string::npos) return reply;
  reply.status = std::atoi(raw.c_str() + space + 1);
  reply.body = raw.substr(header_end + 4);
  return reply;
}

std::string SourceDir() {
  const char* dir = std::getenv("SWITCHYARD_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

// Runs the contract checker on `text`; returns its exit status (0 = conforms).
int CheckScrape(const std::string& text, const std::string& process, bool require_all) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/scrape_", process, "_", getpid(), ".txt");
  {
    std::ofstream out(path);
    out << text;
  }
  const std::string cmd =
      absl::StrCat("/usr/bin/python3 ", SourceDir(), "/tests/helm/check_scrape.py --process ",
                   process, " --file ", path, require_all ? " --require-all" : "");
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(MetricsHttpServerTest, ServesMetricsAndHealthOnOneFreePort) {
  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics m(*registry, "demo", 2);
  std::atomic<bool> ready{false};
  auto server = MetricsHttpServer::Start({.host = "127.0.0.1", .port = 0}, registry, [&] {
    return ready.load() ? absl::OkStatus()
                        : absl::UnavailableError("waiting for 2 workers\n(1 ready)");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->bound_port();
  ASSERT_GT(port, 0);

  HttpReply health = HttpGet(port, "/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(health.body, "waiting for 2 workers (1 ready)\n");  // one line
  ready = true;
  health = HttpGet(port, "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok\n");

  m.prompt_tokens.Increment(5);
  m.RequestErrors(absl::StatusCode::kResourceExhausted).Increment();
  m.time_to_first_token_seconds.Observe(0.03);
  HttpReply scrape = HttpGet(port, "/metrics");
  ASSERT_EQ(scrape.status, 200);
  EXPECT_NE(scrape.body.find("# TYPE switchyard_prompt_tokens_total counter"), std::string::npos);
  EXPECT_NE(scrape.body.find("switchyard_prompt_tokens_total{model_name=\"demo\"} 5"),
            std::string::npos)
      << scrape.body;
  EXPECT_NE(scrape.body.find("switchyard_request_errors_total{code=\"RESOURCE_EXHAUSTED\","
                             "model_name=\"demo\"} 1"),
            std::string::npos);
  // 0.03 lies in (0.02, 0.04]: the 0.04 bucket counts it, the 0.02 one does not.
  EXPECT_NE(scrape.body.find("switchyard_time_to_first_token_seconds_bucket{model_name=\"demo\","
                             "le=\"0.04\"} 1"),
            std::string::npos);
  EXPECT_NE(scrape.body.find("switchyard_time_to_first_token_seconds_bucket{model_name=\"demo\","
                             "le=\"0.02\"} 0"),
            std::string::npos);
  EXPECT_EQ(HttpGet(port, "/nothing").status, 404);
}

TEST(MetricsHttpServerTest, TwoServersGetDistinctPortsAndBusyPortFails) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto a = MetricsHttpServer::Start({.host = "127.0.0.1", .port = 0}, registry, nullptr);
  auto b = MetricsHttpServer::Start({.host = "127.0.0.1", .port = 0}, registry, nullptr);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE((*a)->bound_port(), (*b)->bound_port());
  EXPECT_EQ(HttpGet((*b)->bound_port(), "/health").status, 200);  // no callback: ready
  auto busy = MetricsHttpServer::Start({.host = "127.0.0.1", .port = (*a)->bound_port()}, registry,
                                       nullptr);
  EXPECT_FALSE(busy.ok());
  EXPECT_FALSE(MetricsHttpServer::Start({.port = 70000}, registry, nullptr).ok());
}

TEST(MetricsContractTest, CoordinatorScrapeConformsWithEveryFamily) {
  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics m(*registry, "demo", 4);
  m.RequestSuccess("length").Increment();
  m.ControlRpcErrors("ExecuteStep", absl::StatusCode::kDeadlineExceeded).Increment();
  m.WorkerUp(3).Set(1);
  auto server = MetricsHttpServer::Start({.host = "127.0.0.1", .port = 0}, registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  HttpReply scrape = HttpGet((*server)->bound_port(), "/metrics");
  ASSERT_EQ(scrape.status, 200);
  EXPECT_EQ(CheckScrape(scrape.body, "coordinator", /*require_all=*/true), 0) << scrape.body;
  // The same text is not a worker's: the checker must notice.
  EXPECT_EQ(CheckScrape(scrape.body, "worker", false), 1);
  EXPECT_NE(scrape.body.find("switchyard_worker_up{ep_rank=\"3\",model_name=\"demo\"} 1"),
            std::string::npos);
  EXPECT_NE(scrape.body.find("switchyard_cluster_workers_expected{model_name=\"demo\"} 4"),
            std::string::npos);
}

TEST(MetricsContractTest, WorkerScrapeConformsWithEveryFamilyAndPerExpertOptIn) {
  auto registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics m(*registry, "demo", 1, "cpu", /*per_expert_metrics=*/true);
  ASSERT_NE(m.ExpertTokens(2, 7), nullptr);
  m.ExpertTokens(2, 7)->Increment(3);
  m.all_to_all_dispatch_seconds.Observe(0.0003);
  m.step_seconds.Observe(0.02);
  auto server = MetricsHttpServer::Start({.host = "127.0.0.1", .port = 0}, registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  HttpReply scrape = HttpGet((*server)->bound_port(), "/metrics");
  ASSERT_EQ(scrape.status, 200);
  EXPECT_EQ(CheckScrape(scrape.body, "worker", /*require_all=*/true), 0) << scrape.body;
  EXPECT_NE(scrape.body.find("switchyard_moe_expert_tokens_total{ep_rank=\"1\",expert=\"7\","
                             "layer=\"2\",model_name=\"demo\"} 3"),
            std::string::npos)
      << scrape.body;

  auto plain_registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics plain(*plain_registry, "demo", 0, "cpu", /*per_expert_metrics=*/false);
  EXPECT_EQ(plain.ExpertTokens(0, 0), nullptr);
}

TEST(MetricsTest, StatusCodeNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(14), "UNAVAILABLE");
  EXPECT_EQ(StatusCodeName(1), "CANCELLED");
}

}  // namespace
}  // namespace switchyard::metrics
