#include "tests/unit/worker/comm/comm_test_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "worker/comm/loopback_communicator.h"

namespace switchyard::testing {

std::vector<absl::Status> RunLoopbackRanks(int world_size, const CommunicatorOptions& options,
                                           const RankBody& body, const WrapFn& wrap) {
  auto group = LoopbackGroup::Create(world_size);
  std::vector<absl::Status> statuses(world_size);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = CreateLoopbackCommunicator(group, rank, options);
      if (!comm.ok()) {
        statuses[rank] = comm.status();
        return;
      }
      std::unique_ptr<Communicator> mine = std::move(comm).value();
      if (wrap) mine = wrap(std::move(mine));
      statuses[rank] = body(*mine);
    });
  }
  for (auto& thread : threads) thread.join();
  return statuses;
}

int64_t NumProvenanceRows(int src, int dst, int salt) {
  return (src * 3 + dst * 5 + salt) % 4;  // 0..3: uneven, zero for some pairs
}

namespace {

int32_t Checksum(int src, int64_t row_idx, int dst, int salt) {
  return static_cast<int32_t>((src * 1000003LL + row_idx * 31 + dst * 7 + salt) % 2147483647);
}

constexpr int32_t kGapSentinel = -7;
constexpr int64_t kRowBytes = kProvenanceRowInts * sizeof(int32_t);

}  // namespace

absl::Status ProvenanceAllToAllV(Communicator& comm, int salt) {
  const int world_size = comm.world_size();
  const int me = comm.rank();
  AllToAllVBuffer send, recv;
  send.counts_bytes.assign(world_size, 0);
  send.offsets_bytes.assign(world_size, 0);
  recv.counts_bytes.assign(world_size, 0);
  recv.offsets_bytes.assign(world_size, 0);
  // Send side: peers laid out in reverse rank order.
  int64_t send_rows = 0;
  for (int dst = world_size - 1; dst >= 0; --dst) {
    send.offsets_bytes[dst] = send_rows * kRowBytes;
    send.counts_bytes[dst] = NumProvenanceRows(me, dst, salt) * kRowBytes;
    send_rows += NumProvenanceRows(me, dst, salt);
  }
  std::vector<int32_t> send_data(send_rows * kProvenanceRowInts);
  for (int dst = 0; dst < world_size; ++dst) {
    int32_t* row = send_data.data() + send.offsets_bytes[dst] / sizeof(int32_t);
    for (int64_t i = 0; i < NumProvenanceRows(me, dst, salt); ++i, row += kProvenanceRowInts) {
      row[0] = me;
      row[1] = static_cast<int32_t>(i);
      row[2] = dst;
      row[3] = Checksum(me, i, dst, salt);
    }
  }
  // Receive side: one gap row after each peer's region, which must stay untouched.
  int64_t recv_rows = 0;
  for (int src = 0; src < world_size; ++src) {
    recv.offsets_bytes[src] = recv_rows * kRowBytes;
    recv.counts_bytes[src] = NumProvenanceRows(src, me, salt) * kRowBytes;
    recv_rows += NumProvenanceRows(src, me, salt) + 1;
  }
  std::vector<int32_t> recv_data(recv_rows * kProvenanceRowInts, kGapSentinel);
  send.data = send_data.data();
  recv.data = recv_data.data();
  absl::Status status = comm.AllToAllV(send, recv);
  if (!status.ok()) return status;
  for (int src = 0; src < world_size; ++src) {
    const int32_t* row = recv_data.data() + recv.offsets_bytes[src] / sizeof(int32_t);
    const int64_t num_rows = NumProvenanceRows(src, me, salt);
    for (int64_t i = 0; i < num_rows; ++i, row += kProvenanceRowInts) {
      if (row[0] != src || row[1] != i || row[2] != me || row[3] != Checksum(src, i, me, salt)) {
        return absl::InternalError(absl::StrCat("rank ", me, ": row ", i, " from rank ", src,
                                                " reads {", row[0], ",", row[1], ",", row[2], ",",
                                                row[3], "}, expected {", src, ",", i, ",", me, ",",
                                                Checksum(src, i, me, salt), "}"));
      }
    }
    for (int64_t h = 0; h < kProvenanceRowInts; ++h) {
      if (row[h] != kGapSentinel) {
        return absl::InternalError(
            absl::StrCat("rank ", me, ": gap after rank ", src, "'s rows was overwritten"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<ChildResult> RunForkedRanks(int world_size, const ChildBody& body,
                                        double wait_limit_seconds) {
  char dir_template[] = "/tmp/switchyard_gloo_XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  std::vector<pid_t> pids(world_size, -1);
  for (int rank = 0; rank < world_size; ++rank) {
    pids[rank] = fork();
    if (pids[rank] == 0) {
      // Nothing may escape the child: an exception would unwind into the parent's gtest loop.
      absl::Status status;
      try {
        status = body(rank, dir);
      } catch (const std::exception& e) {
        status = absl::InternalError(absl::StrCat("child threw: ", e.what()));
      } catch (...) {
        status = absl::InternalError("child threw a non-std exception");
      }
      std::ofstream(absl::StrCat(dir, "/report_", rank))
          << "code=" << static_cast<int>(status.code()) << " " << status.ToString();
      std::_Exit(status.ok() ? 0 : 1);  // skip gtest's and static destructors in the child
    }
  }
  std::vector<ChildResult> results(world_size);
  std::vector<bool> done(world_size, false);
  const absl::Time deadline = absl::Now() + absl::Seconds(wait_limit_seconds);
  int num_done = 0;
  while (num_done < world_size && absl::Now() < deadline) {
    for (int rank = 0; rank < world_size; ++rank) {
      int wstatus = 0;
      if (done[rank] || waitpid(pids[rank], &wstatus, WNOHANG) != pids[rank]) continue;
      done[rank] = true;
      ++num_done;
      results[rank].exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
      if (WIFSIGNALED(wstatus)) results[rank].signal = WTERMSIG(wstatus);
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  for (int rank = 0; rank < world_size; ++rank) {
    if (!done[rank]) {
      results[rank].hung = true;
      kill(pids[rank], SIGKILL);
      waitpid(pids[rank], nullptr, 0);
    }
    std::ifstream report(absl::StrCat(dir, "/report_", rank));
    std::stringstream text;
    text << report.rdbuf();
    results[rank].report = text.str();
    if (results[rank].signal != 0) {
      absl::StrAppend(&results[rank].report, " [killed by signal ", results[rank].signal, "]");
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return results;
}

absl::StatusCode ReportedCode(const ChildResult& result) {
  int code = 0;
  if (std::sscanf(result.report.c_str(), "code=%d", &code) != 1) return absl::StatusCode::kUnknown;
  return static_cast<absl::StatusCode>(code);
}

}  // namespace switchyard::testing
