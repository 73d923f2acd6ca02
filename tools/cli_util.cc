#include "tools/cli_util.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"

namespace switchyard::cli {

absl::Status FillRequest(const RequestOptions& o, v1::GenerateRequest& request) {
  if (!o.request_id.empty()) request.set_request_id(o.request_id);
  v1::SamplingParams& s = *request.mutable_sampling();
  if (o.temperature) s.set_temperature(static_cast<float>(*o.temperature));
  if (o.top_p) s.set_top_p(static_cast<float>(*o.top_p));
  s.set_top_k(o.top_k);
  s.set_min_p(static_cast<float>(o.min_p));
  if (o.repetition_penalty) s.set_repetition_penalty(static_cast<float>(*o.repetition_penalty));
  s.set_presence_penalty(static_cast<float>(o.presence_penalty));
  s.set_frequency_penalty(static_cast<float>(o.frequency_penalty));
  if (o.seed) s.set_seed(*o.seed);
  s.set_logprobs(o.logprobs);

  v1::StoppingParams& p = *request.mutable_stopping();
  constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
  if (o.max_tokens) {
    if (*o.max_tokens < 0 || *o.max_tokens > kMaxU32) {
      return absl::InvalidArgumentError(
          absl::StrCat("--max_tokens must be 0..", kMaxU32, ", got ", *o.max_tokens));
    }
    p.set_max_tokens(static_cast<uint32_t>(*o.max_tokens));
  }
  if (o.min_tokens < 0 || o.min_tokens > kMaxU32) {
    return absl::InvalidArgumentError(
        absl::StrCat("--min_tokens must be 0..", kMaxU32, ", got ", o.min_tokens));
  }
  p.set_min_tokens(static_cast<uint32_t>(o.min_tokens));
  for (const std::string& stop : o.stop) p.add_stop(stop);
  for (int32_t id : o.stop_token_ids) p.add_stop_token_ids(id);
  p.set_ignore_eos(o.ignore_eos);
  p.set_include_stop_str_in_output(o.include_stop_str_in_output);
  if (o.add_special_tokens) request.set_add_special_tokens(*o.add_special_tokens);
  if (o.skip_special_tokens) request.set_skip_special_tokens(*o.skip_special_tokens);
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // Generations can be long; the defaults (4 MiB) are fine for messages, but keep a stream alive
  // through idle gaps.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

std::string DescribeStatus(const grpc::Status& status, const std::string& address) {
  // grpc::StatusCode and absl::StatusCode share numbers and names.
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      (message.find("connect") != std::string::npos || message.empty())) {
    message = absl::StrCat("cannot reach the coordinator at ", address, " (", message, ")");
  }
  return absl::StrCat(name, ": ", message);
}

namespace {

std::string StateName(v1::ServingState state) {
  switch (state) {
    case v1::SERVING_STATE_STARTING:
      return "STARTING";
    case v1::SERVING_STATE_SERVING:
      return "SERVING";
    case v1::SERVING_STATE_DRAINING:
      return "DRAINING";
    default:
      return "UNKNOWN";
  }
}

std::string Pad(const std::string& text, size_t width) {
  return text.size() >= width ? text + " " : text + std::string(width - text.size(), ' ');
}

}  // namespace

std::string FormatServerInfo(const v1::ServerInfo& info) {
  std::string out;
  absl::StrAppendFormat(&out, "model      %s (switchyard %s)\n", info.model_name(), info.version());
  absl::StrAppendFormat(&out, "state      %s, workers %d/%d\n", StateName(info.state()),
                        info.workers_size(), info.num_workers_expected());
  absl::StrAppendFormat(&out, "requests   %d running, %d waiting; %d steps, %d preemptions\n",
                        info.num_running(), info.num_waiting(), info.steps(),
                        info.num_preemptions());
  const double hit_perc = info.prefix_cache_queries() == 0
                              ? 0.0
                              : 100.0 * static_cast<double>(info.prefix_cache_hits()) /
                                    static_cast<double>(info.prefix_cache_queries());
  absl::StrAppendFormat(&out, "kv cache   %.1f%% used; prefix cache %d/%d tokens hit (%.1f%%)\n",
                        100.0 * info.kv_cache_usage(), info.prefix_cache_hits(),
                        info.prefix_cache_queries(), hit_perc);
  const v1::PlacementInfo& placement = info.placement();
  absl::StrAppendFormat(&out, "placement  version %d over %d ranks; data plane %s\n",
                        placement.version(), placement.num_ranks(),
                        info.data_plane().empty() ? "-" : info.data_plane());
  out += "\n";
  const std::vector<std::pair<std::string, size_t>> columns = {
      {"RANK", 6},    {"ADDRESS", 22},       {"STATE", 10},     {"DEVICE", 8}, {"KV BLOCKS", 14},
      {"RUNNING", 9}, {"TOKENS ROUTED", 15}, {"HEARTBEAT", 11}, {"EXPERTS (LAYER 0)", 0}};
  for (const auto& [name, width] : columns) out += width ? Pad(name, width) : name;
  out += "\n";
  for (const v1::WorkerInfo& w : info.workers()) {
    const std::string experts = w.rank() < static_cast<uint32_t>(placement.experts_per_rank_size())
                                    ? placement.experts_per_rank(static_cast<int>(w.rank()))
                                    : "-";
    out += Pad(absl::StrCat(w.rank()), 6);
    out += Pad(w.address(), 22);
    out += Pad(w.state().empty() ? "-" : w.state(), 10);
    out += Pad(w.device().empty() ? "-" : w.device(), 8);
    out += Pad(absl::StrCat(w.kv_blocks_used(), "/", w.kv_blocks_total()), 14);
    out += Pad(absl::StrCat(w.num_running()), 9);
    out += Pad(absl::StrCat(w.tokens_routed()), 15);
    out += Pad(absl::StrFormat("%.1fs", w.last_heartbeat_age_seconds()), 11);
    out += experts + "\n";
  }
  if (info.workers_size() == 0) out += "(no workers registered yet)\n";
  return out;
}

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    return "{}";
  }
  return json;
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  s.count = values.size();
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  auto percentile = [&](double q) {
    const double pos = q * static_cast<double>(values.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
  };
  s.p50 = percentile(0.5);
  s.p90 = percentile(0.9);
  s.p99 = percentile(0.99);
  s.max = values.back();
  return s;
}

}  // namespace switchyard::cli
