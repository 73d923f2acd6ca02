// Pieces of the `switchyard` command-line client (tools/cli_main.cc): the gRPC channel, request
// building, id-list parsing, the `status` table and latency statistics. Kept apart from main so
// the tests can check them without a server.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/cli_support.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"
#include "switchyard/v1/inference.grpc.pb.h"

namespace switchyard::cli {

// Exit status for a usage error (bad flag values); gRPC failures exit with their status code.
inline constexpr int kExitUsage = 64;

// Sampling and stopping options as the flags give them; unset optionals keep the server default.
struct RequestOptions {
  std::optional<double> temperature;
  std::optional<double> top_p;
  int top_k = 0;
  double min_p = 0;
  std::optional<double> repetition_penalty;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  std::optional<uint64_t> seed;
  int logprobs = 0;
  std::optional<int64_t> max_tokens;
  int64_t min_tokens = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool include_stop_str_in_output = false;
  std::optional<bool> add_special_tokens;
  std::optional<bool> skip_special_tokens;
  std::string request_id;
};

// Fills sampling, stopping and the flags of `request` (not its input). Values the proto cannot
// hold (negative max_tokens, ...) are INVALID_ARGUMENT here; range checks are the server's.
absl::Status FillRequest(const RequestOptions& options, v1::GenerateRequest& request);



// An insecure channel to host:port (the coordinator's client port).
std::shared_ptr<grpc::Channel> NewChannel(const std::string& address);

// "RESOURCE_EXHAUSTED: queue is full (64 waiting)"; UNAVAILABLE on a connection failure says
// which address could not be reached.
std::string DescribeStatus(const grpc::Status& status, const std::string& address);

// The readable `switchyard status` view of a ServerInfo.
std::string FormatServerInfo(const v1::ServerInfo& info);

// One line of JSON for a message (proto field names, defaults printed).
std::string ToJsonLine(const google::protobuf::Message& message);

// Mean and percentiles of a sample (seconds in, any unit out).
struct Summary {
  size_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
};
// Percentiles by linear interpolation between closest ranks (numpy's default); all zero for an
// empty sample.
Summary Summarize(std::vector<double> values);

}  // namespace switchyard::cli
