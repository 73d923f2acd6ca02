#include "tools/cli_bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct PlannedRequest {
  std::vector<int32_t> prompt;
  int output_len = 0;
  double arrival_s = 0;  // offset from the start (open loop only)
};

struct Outcome {
  bool ok = false;
  std::string error;
  int64_t output_tokens = 0;
  double ttft_s = 0;
  double e2e_s = 0;
  std::vector<double> itl_s;
};

int SpreadLength(int mean, double range_ratio, std::mt19937_64& rng) {
  const int lo = std::max(1, static_cast<int>(std::floor(mean * (1.0 - range_ratio))));
  const int hi = std::max(lo, static_cast<int>(std::ceil(mean * (1.0 + range_ratio))));
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

std::vector<PlannedRequest> Plan(const BenchOptions& o, uint32_t vocab_size) {
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab_size) - 1);
  std::exponential_distribution<double> gap(o.request_rate > 0 ? o.request_rate : 1.0);
  std::vector<PlannedRequest> plan(o.num_requests);
  double t = 0;
  for (PlannedRequest& r : plan) {
    r.prompt.resize(SpreadLength(o.input_len, o.range_ratio, rng));
    for (int32_t& id : r.prompt) id = token(rng);
    r.output_len = SpreadLength(o.output_len, o.range_ratio, rng);
    if (o.request_rate > 0) {
      r.arrival_s = t;
      t += gap(rng);
    }
  }
  return plan;
}

Outcome RunOne(v1::InferenceService::Stub& stub, const BenchOptions& o, const PlannedRequest& r,
               const std::string& address) {
  Outcome out;
  v1::GenerateRequest request;
  RequestOptions request_options = o.request;
  request_options.max_tokens = r.output_len;
  request_options.ignore_eos = true;
  request_options.request_id.clear();  // ids must be unique: let the server assign them
  if (absl::Status s = FillRequest(request_options, request); !s.ok()) {
    out.error = std::string(s.message());
    return out;
  }
  request.mutable_token_ids()->mutable_ids()->Add(r.prompt.begin(), r.prompt.end());
  grpc::ClientContext context;
  if (o.timeout_s > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(o.timeout_s * 1e6)));
  }
  const Clock::time_point start = Clock::now();
  Clock::time_point last = start;
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  bool finished = false;
  while (reader->Read(&response)) {
    if (response.has_delta() && response.delta().token_ids_size() > 0) {
      const Clock::time_point now = Clock::now();
      if (out.output_tokens == 0) {
        out.ttft_s = SecondsBetween(start, now);
      } else {
        out.itl_s.push_back(SecondsBetween(last, now));
      }
      last = now;
      out.output_tokens += response.delta().token_ids_size();
    } else if (response.has_finished()) {
      finished = true;
    }
  }
  const grpc::Status status = reader->Finish();
  out.e2e_s = SecondsBetween(start, Clock::now());
  if (!status.ok()) {
    out.error = DescribeStatus(status, address);
  } else if (!finished) {
    out.error = "the stream ended without a Finished message";
  } else {
    out.ok = true;
  }
  return out;
}

}  // namespace

absl::StatusOr<BenchReport> RunBench(v1::InferenceService::Stub& stub, const BenchOptions& o,
                                     const std::string& address) {
  if (o.num_requests < 1 || o.concurrency < 1 || o.input_len < 1 || o.output_len < 1 ||
      o.range_ratio < 0 || o.range_ratio >= 1 || o.request_rate < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected --num_requests, --concurrency, --input_len, --output_len >= 1, "
                     "--range_ratio in [0, 1) and --request_rate >= 0; got ",
                     o.num_requests, ", ", o.concurrency, ", ", o.input_len, ", ", o.output_len,
                     ", ", o.range_ratio, ", ", o.request_rate));
  }
  v1::ModelInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status status = stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat("GetModelInfo: ", DescribeStatus(status, address)));
    }
  }
  if (info.vocab_size() == 0) return absl::FailedPreconditionError("the model reports vocab 0");
  const std::vector<PlannedRequest> plan = Plan(o, info.vocab_size());
  std::vector<Outcome> outcomes(plan.size());

  const Clock::time_point start = Clock::now();
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t idx; (idx = next.fetch_add(1)) < plan.size();) {
      if (o.request_rate > 0) {
        std::this_thread::sleep_until(
            start + std::chrono::microseconds(static_cast<int64_t>(plan[idx].arrival_s * 1e6)));
      }
      outcomes[idx] = RunOne(stub, o, plan[idx], address);
    }
  };
  // Closed loop: `concurrency` streams, each taking the next request when its last one ends.
  // Open loop: requests start at their arrival times; `concurrency` threads wait for the arrivals
  // in order, so at most `concurrency` are in flight and a late one starts as soon as one frees.
  std::vector<std::thread> threads;
  const int num_threads = std::min(o.concurrency, o.num_requests);
  threads.reserve(num_threads);
  for (int i = 0; i < num_threads; ++i) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();

  BenchReport report;
  report.num_requests = o.num_requests;
  report.duration_s = SecondsBetween(start, Clock::now());
  std::vector<double> ttft, itl, e2e;
  for (size_t idx = 0; idx < outcomes.size(); ++idx) {
    const Outcome& out = outcomes[idx];
    if (!out.ok) {
      ++report.num_failed;
      if (report.first_error.empty()) report.first_error = out.error;
      continue;
    }
    ++report.num_completed;
    report.total_input_tokens += static_cast<int64_t>(plan[idx].prompt.size());
    report.total_output_tokens += out.output_tokens;
    ttft.push_back(out.ttft_s);
    e2e.push_back(out.e2e_s);
    itl.insert(itl.end(), out.itl_s.begin(), out.itl_s.end());
  }
  report.ttft_s = Summarize(std::move(ttft));
  report.itl_s = Summarize(std::move(itl));
  report.e2e_s = Summarize(std::move(e2e));
  return report;
}

namespace {

double PerSecond(double amount, double seconds) { return seconds > 0 ? amount / seconds : 0; }

nlohmann::json SummaryMs(const Summary& s) {
  return {{"mean", s.mean * 1e3}, {"p50", s.p50 * 1e3}, {"p90", s.p90 * 1e3},
          {"p99", s.p99 * 1e3},   {"max", s.max * 1e3}, {"count", s.count}};
}

}  // namespace

std::string FormatBenchReport(const BenchReport& r) {
  std::string out;
  absl::StrAppendFormat(&out, "requests        %d completed, %d failed of %d in %.2f s\n",
                        r.num_completed, r.num_failed, r.num_requests, r.duration_s);
  if (!r.first_error.empty()) absl::StrAppendFormat(&out, "first error     %s\n", r.first_error);
  absl::StrAppendFormat(&out,
                        "throughput      %.2f requests/s, %.1f output tokens/s, %.1f total "
                        "tokens/s\n",
                        PerSecond(r.num_completed, r.duration_s),
                        PerSecond(r.total_output_tokens, r.duration_s),
                        PerSecond(r.total_input_tokens + r.total_output_tokens, r.duration_s));
  absl::StrAppendFormat(&out, "tokens          %d input, %d output\n", r.total_input_tokens,
                        r.total_output_tokens);
  absl::StrAppendFormat(&out, "\n%-22s %10s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50",
                        "p90", "p99", "max");
  for (const auto& [name, s] :
       {std::pair<const char*, const Summary&>{"time to first token", r.ttft_s},
        {"inter-token", r.itl_s},
        {"end to end", r.e2e_s}}) {
    absl::StrAppendFormat(&out, "%-22s %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, s.mean * 1e3,
                          s.p50 * 1e3, s.p90 * 1e3, s.p99 * 1e3, s.max * 1e3);
  }
  return out;
}

std::string BenchReportJson(const BenchReport& r) {
  nlohmann::json j = {
      {"num_requests", r.num_requests},
      {"completed", r.num_completed},
      {"failed", r.num_failed},
      {"first_error", r.first_error},
      {"duration_s", r.duration_s},
      {"request_throughput", PerSecond(r.num_completed, r.duration_s)},
      {"output_throughput", PerSecond(r.total_output_tokens, r.duration_s)},
      {"total_input_tokens", r.total_input_tokens},
      {"total_output_tokens", r.total_output_tokens},
      {"ttft_ms", SummaryMs(r.ttft_s)},
      {"itl_ms", SummaryMs(r.itl_s)},
      {"e2e_ms", SummaryMs(r.e2e_s)},
  };
  return j.dump();
}

}  // namespace switchyard::cli
