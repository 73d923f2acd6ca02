// `switchyard bench`: a load generator for the client API. Closed loop (a fixed number of
// concurrent streams) or open loop (Poisson arrivals at a fixed request rate, optionally capped
// by the concurrency), random-token prompts of a chosen length spread, ignore_eos so output
// lengths are exact; reports throughput and TTFT / inter-token / end-to-end latency.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "switchyard/v1/inference.grpc.pb.h"
#include "tools/cli_util.h"

namespace switchyard::cli {

struct BenchOptions {
  int num_requests = 100;
  int concurrency = 8;      // streams in flight at most (closed loop: exactly)
  double request_rate = 0;  // requests/s with Poisson arrivals; 0 = closed loop
  int input_len = 128;      // prompt tokens (mean)
  int output_len = 64;      // output tokens (mean)
  double range_ratio = 0;   // lengths uniform in [len * (1 - r), len * (1 + r)], at least 1
  uint64_t seed = 0;        // prompts, lengths and arrivals
  double timeout_s = 0;     // per request deadline; 0 = none
  RequestOptions request;   // sampling; max_tokens and ignore_eos are set per request
};

struct BenchReport {
  int num_requests = 0;
  int num_completed = 0;
  int num_failed = 0;
  std::string first_error;  // of the failures, the first one seen
  double duration_s = 0;
  int64_t total_input_tokens = 0;
  int64_t total_output_tokens = 0;
  Summary ttft_s;
  Summary itl_s;
  Summary e2e_s;
};

// Runs the benchmark against `stub` (GetModelInfo first for the vocabulary).
absl::StatusOr<BenchReport> RunBench(v1::InferenceService::Stub& stub, const BenchOptions& options,
                                     const std::string& address);

std::string FormatBenchReport(const BenchReport& report);
std::string BenchReportJson(const BenchReport& report);

}  // namespace switchyard::cli
