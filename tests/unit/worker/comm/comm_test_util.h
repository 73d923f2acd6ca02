// Test helpers for the data plane: run ranks as loopback threads or as forked Gloo processes, and
// provenance payloads for all-to-all-v checks (each row says where it came from, as in DeepEP's
// tests).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"

namespace switchyard::testing {

// Options whose collectives fail after `timeout`: short, so that a test of a failure ends soon.
inline CommunicatorOptions TimeoutOptions(absl::Duration timeout) {
  CommunicatorOptions options;
  options.timeout = timeout;
  return options;
}

// Runs `body(comm)` on world_size threads, each with its own loopback communicator (wrapped by
// `wrap` when given, e.g. into a FaultyCommunicator). Returns each rank's status.
using RankBody = std::function<absl::Status(Communicator& comm)>;
using WrapFn = std::function<std::unique_ptr<Communicator>(std::unique_ptr<Communicator>)>;
std::vector<absl::Status> RunLoopbackRanks(int world_size, const CommunicatorOptions& options,
                                           const RankBody& body, const WrapFn& wrap = nullptr);

// Rows of a provenance all-to-all-v: rank `src` sends NumRows(src, dst, salt) rows to `dst`.
// Uneven, and zero for some pairs (including some self pairs).
int64_t NumProvenanceRows(int src, int dst, int salt);
constexpr int64_t kProvenanceRowInts = 4;  // {src, row index, dst, checksum}

// Runs one provenance all-to-all-v on `comm` with world_size ranks. The send side lays its peers
// out in reverse order and the receive side leaves gaps, so offsets are exercised, not just
// counts. Returns an error naming the first wrong row.
absl::Status ProvenanceAllToAllV(Communicator& comm, int salt);

// The forked-process runner for Gloo tests. Each child runs body(rank, store_dir) and exits; the
// parent waits up to `wait_limit` and kills stragglers (reported as hung).
struct ChildResult {
  int exit_code = -1;  // the child's exit code; -1 if it was killed or crashed
  int signal = 0;      // the signal that ended the child, if one did
  bool hung = false;   // still running at the wait limit
  std::string report;  // what the child wrote: its status code and message
};
using ChildBody = std::function<absl::Status(int rank, const std::string& store_dir)>;
// Forks world_size children; must be called before the test process starts any thread. A child
// may also _exit on its own (to simulate a crash); its report is then empty.
std::vector<ChildResult> RunForkedRanks(int world_size, const ChildBody& body,
                                        double wait_limit_seconds);

// Parses the status code a child reported ("code=<n> ..."); kUnknown if absent.
absl::StatusCode ReportedCode(const ChildResult& result);

}  // namespace switchyard::testing
