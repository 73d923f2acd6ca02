// switchyard: the command-line client of a Switchyard deployment (the coordinator's client API).
//
//   switchyard generate --prompt "Hello" [--max_tokens 32 --temperature 0 ...] [--json]
//   switchyard status [--json]
//   switchyard bench --num_requests 100 --concurrency 16 --input_len 128 --output_len 64 [--json]
//   switchyard model [--json]
//   switchyard abort --request_id ID
//
// Exit status: 0 on success; a gRPC failure exits with its status code (3 INVALID_ARGUMENT,
// 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, ...) after one line on stderr; 64 for a usage error.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "tools/cli_bench.h"
#include "tools/cli_util.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "the coordinator's client API, host:port");
ABSL_FLAG(bool, json, false,
          "print JSON: generate, one line per streamed message; others, one object");
ABSL_FLAG(double, timeout_s, 0, "deadline of each call in seconds; 0 = none (status: 10)");
// generate
ABSL_FLAG(std::string, prompt, "", "generate: prompt text (encoded by the server's tokenizer)");
ABSL_FLAG(std::string, prompt_ids, "", "generate: prompt token ids, comma-separated");
ABSL_FLAG(std::string, request_id, "", "generate/abort: the request id");
// sampling and stopping (inference.proto); unset optionals keep the server's defaults
ABSL_FLAG(std::optional<double>, temperature, std::nullopt, "sampling temperature; 0 = greedy");
ABSL_FLAG(std::optional<double>, top_p, std::nullopt, "nucleus mass, (0, 1]");
ABSL_FLAG(int32_t, top_k, 0, "keep the k most likely tokens; 0 or -1 = all");
ABSL_FLAG(double, min_p, 0, "drop tokens below min_p * p(most likely)");
ABSL_FLAG(std::optional<double>, repetition_penalty, std::nullopt, "> 0; 1 = off");
ABSL_FLAG(double, presence_penalty, 0, "[-2, 2]");
ABSL_FLAG(double, frequency_penalty, 0, "[-2, 2]");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt,
          "sampling seed (bench: also prompts, lengths and arrivals)");
ABSL_FLAG(int32_t, logprobs, 0, "log-probabilities of the sampled token and top n - 1");
ABSL_FLAG(std::optional<int64_t>, max_tokens, std::nullopt, "tokens to generate at most");
ABSL_FLAG(int64_t, min_tokens, 0, "no stop before this many tokens");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated");
ABSL_FLAG(std::string, stop_token_ids, "", "stop token ids, comma-separated");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after EOS");
ABSL_FLAG(bool, include_stop_str_in_output, false, "keep the matched stop string in the text");
ABSL_FLAG(std::optional<bool>, add_special_tokens, std::nullopt, "BOS etc. for text prompts");
ABSL_FLAG(std::optional<bool>, skip_special_tokens, std::nullopt, "special tokens add no text");
// bench
ABSL_FLAG(int32_t, num_requests, 100, "bench: requests to send");
ABSL_FLAG(std::optional<int32_t>, concurrency, std::nullopt,
          "bench: streams in flight (closed loop; default 8); with --request_rate a cap "
          "(default none)");
ABSL_FLAG(double, request_rate, 0, "bench: requests/s, Poisson arrivals; 0 = closed loop");
ABSL_FLAG(int32_t, input_len, 128, "bench: prompt tokens (random ids from the vocabulary)");
ABSL_FLAG(int32_t, output_len, 64, "bench: output tokens (ignore_eos: exact)");
ABSL_FLAG(double, range_ratio, 0, "bench: lengths uniform in [len*(1-r), len*(1+r)], r in [0, 1)");

namespace switchyard::cli {
namespace {

constexpr char kUsage[] =
    "switchyard <generate|status|bench|model|abort> [flags]\n"
    "  generate  --prompt TEXT | --prompt_ids 1,2,3  [--max_tokens N --temperature T ...] "
    "[--json]\n"
    "  status    cluster state, workers, KV cache and placement [--json]\n"
    "  bench     --num_requests N (--concurrency C | --request_rate R) --input_len L --output_len "
    "L\n"
    "            [--range_ratio r] [--json]\n"
    "  model     model information [--json]\n"
    "  abort     --request_id ID\n"
    "All: --address HOST:PORT (default 127.0.0.1:50051), --timeout_s S. See --help for every flag.";

int Fail(const std::string& command, const std::string& message, int code) {
  std::cerr << "switchyard " << command << ": " << message << "\n";
  return code;
}

int FailRpc(const std::string& command, const grpc::Status& status) {
  return Fail(command, DescribeStatus(status, absl::GetFlag(FLAGS_address)),
              static_cast<int>(status.error_code()));
}

void SetDeadline(grpc::ClientContext& context, double default_s) {
  double timeout_s = absl::GetFlag(FLAGS_timeout_s);
  if (timeout_s <= 0) timeout_s = default_s;
  if (timeout_s > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
  }
}

absl::StatusOr<RequestOptions> RequestOptionsFromFlags() {
  RequestOptions o;
  o.temperature = absl::GetFlag(FLAGS_temperature);
  o.top_p = absl::GetFlag(FLAGS_top_p);
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.min_p = absl::GetFlag(FLAGS_min_p);
  o.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  o.presence_penalty = absl::GetFlag(FLAGS_presence_penalty);
  o.frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.logprobs = absl::GetFlag(FLAGS_logprobs);
  o.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  o.min_tokens = absl::GetFlag(FLAGS_min_tokens);
  o.stop = absl::GetFlag(FLAGS_stop);
  auto stop_ids = ParseIdList(absl::GetFlag(FLAGS_stop_token_ids));
  if (!stop_ids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--stop_token_ids: ", stop_ids.status().message()));
  }
  o.stop_token_ids = *std::move(stop_ids);
  o.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  o.include_stop_str_in_output = absl::GetFlag(FLAGS_include_stop_str_in_output);
  o.add_special_tokens = absl::GetFlag(FLAGS_add_special_tokens);
  o.skip_special_tokens = absl::GetFlag(FLAGS_skip_special_tokens);
  o.request_id = absl::GetFlag(FLAGS_request_id);
  return o;
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_ABORT:
      return "abort";
    default:
      return "unspecified";
  }
}

int Generate(v1::InferenceService::Stub& stub) {
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const std::string prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (prompt.empty() == prompt_ids.empty()) {
    return Fail("generate", "give exactly one of --prompt TEXT or --prompt_ids 1,2,3", kExitUsage);
  }
  auto options = RequestOptionsFromFlags();
  if (!options.ok()) return Fail("generate", std::string(options.status().message()), kExitUsage);
  v1::GenerateRequest request;
  if (absl::Status s = FillRequest(*options, request); !s.ok()) {
    return Fail("generate", std::string(s.message()), kExitUsage);
  }
  if (!prompt.empty()) {
    request.set_text(prompt);
  } else {
    auto ids = ParseIdList(prompt_ids);
    if (!ids.ok()) {
      return Fail("generate", absl::StrCat("--prompt_ids: ", ids.status().message()), kExitUsage);
    }
    request.mutable_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  }
  const bool json = absl::GetFlag(FLAGS_json);
  grpc::ClientContext context;
  SetDeadline(context, 0);
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  std::optional<v1::Finished> finished;
  bool printed_text = false;
  while (reader->Read(&response)) {
    if (json) {
      std::fputs((ToJsonLine(response) + "\n").c_str(), stdout);
      std::fflush(stdout);
    } else if (response.has_delta()) {
      std::fputs(response.delta().text().c_str(), stdout);
      std::fflush(stdout);
      printed_text = printed_text || !response.delta().text().empty();
    }
    if (response.has_finished()) finished = response.finished();
  }
  const grpc::Status status = reader->Finish();
  if (!json && printed_text) std::fputs("\n", stdout);
  std::fflush(stdout);
  if (!status.ok()) return FailRpc("generate", status);
  if (!finished) return Fail("generate", "the stream ended without a Finished message", 1);
  if (!json) {
    const v1::Usage& u = finished->usage();
    std::cerr << "[" << FinishReasonName(finished->reason()) << "] " << u.prompt_tokens()
              << " prompt tokens (" << u.cached_prompt_tokens() << " cached), "
              << u.completion_tokens() << " generated, request " << finished->request_id() << "\n";
  }
  return 0;
}

int Status(v1::InferenceService::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context, 10);
  v1::ServerInfo info;
  grpc::Status status = stub.GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) return FailRpc("status", status);
  std::cout << (absl::GetFlag(FLAGS_json) ? ToJsonLine(info) + "\n" : FormatServerInfo(info));
  return 0;
}

int Model(v1::InferenceService::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context, 10);
  v1::ModelInfo info;
  grpc::Status status = stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return FailRpc("model", status);
  std::cout << (absl::GetFlag(FLAGS_json) ? ToJsonLine(info) : info.DebugString()) << "\n";
  return 0;
}

int Abort(v1::InferenceService::Stub& stub) {
  v1::AbortRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  if (request.request_id().empty()) return Fail("abort", "give --request_id ID", kExitUsage);
  grpc::ClientContext context;
  SetDeadline(context, 10);
  v1::AbortResponse response;
  grpc::Status status = stub.Abort(&context, request, &response);
  if (!status.ok()) return FailRpc("abort", status);
  return 0;
}

int Bench(v1::InferenceService::Stub& stub) {
  BenchOptions o;
  o.num_requests = absl::GetFlag(FLAGS_num_requests);
  o.request_rate = absl::GetFlag(FLAGS_request_rate);
  o.concurrency =
      absl::GetFlag(FLAGS_concurrency).value_or(o.request_rate > 0 ? o.num_requests : 8);
  o.input_len = absl::GetFlag(FLAGS_input_len);
  o.output_len = absl::GetFlag(FLAGS_output_len);
  o.range_ratio = absl::GetFlag(FLAGS_range_ratio);
  o.seed = absl::GetFlag(FLAGS_seed).value_or(0);
  o.timeout_s = absl::GetFlag(FLAGS_timeout_s);
  auto request = RequestOptionsFromFlags();
  if (!request.ok()) return Fail("bench", std::string(request.status().message()), kExitUsage);
  o.request = *std::move(request);
  auto report = RunBench(stub, o, absl::GetFlag(FLAGS_address));
  if (!report.ok()) {
    const bool usage = report.status().code() == absl::StatusCode::kInvalidArgument;
    return Fail("bench", std::string(report.status().message()),
                usage ? kExitUsage : static_cast<int>(report.status().code()));
  }
  std::cout << (absl::GetFlag(FLAGS_json) ? BenchReportJson(*report) + "\n"
                                          : FormatBenchReport(*report));
  if (report->num_failed > 0) {
    return Fail("bench",
                absl::StrCat(report->num_failed, " of ", report->num_requests,
                             " requests failed; first: ", report->first_error),
                1);
  }
  return 0;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = ParseFlagsWithEnv(argc, argv);
  if (args.size() != 2) {
    std::cerr << (args.size() < 2 ? "switchyard: give a command\n"
                                  : "switchyard: one command only, flags start with --\n")
              << kUsage << "\n";
    return kExitUsage;
  }
  const std::string command = args[1];
  auto stub = v1::InferenceService::NewStub(NewChannel(absl::GetFlag(FLAGS_address)));
  if (command == "generate") return Generate(*stub);
  if (command == "status") return Status(*stub);
  if (command == "bench") return Bench(*stub);
  if (command == "model") return Model(*stub);
  if (command == "abort") return Abort(*stub);
  std::cerr << "switchyard: unknown command \"" << command << "\"\n" << kUsage << "\n";
  return kExitUsage;
}

}  // namespace
}  // namespace switchyard::cli

int main(int argc, char** argv) { return switchyard::cli::Main(argc, argv); }
