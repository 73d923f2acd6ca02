// Gloo communicator between forked processes on 127.0.0.1, rendezvous through a FileStore in a
// fresh temporary directory: all-to-all-v provenance, all-gather, barrier, MoE dispatch/combine,
// and faults (a peer that exits mid-all-to-all, a peer stalled past the timeout, a peer that never
// shows up, Abort). The test process itself never touches Gloo, so it has no threads to fork.
#include "worker/comm/gloo_communicator.h"

#include <unistd.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "gloo/rendezvous/file_store.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "tests/unit/worker/moe/moe_test_util.h"
#include "worker/comm/faulty_communicator.h"

namespace switchyard {
namespace {

using testing::ChildResult;
using testing::MoeCase;
using testing::ReportedCode;
using testing::Routing;
using testing::RunForkedRanks;

GlooCommunicatorOptions FastOptions() {
  GlooCommunicatorOptions options;
  options.comm.timeout = absl::Seconds(2);
  options.comm.connect_timeout = absl::Seconds(10);
  return options;
}

absl::StatusOr<std::unique_ptr<Communicator>> Connect(int rank, int world_size,
                                                      const std::string& store_dir,
                                                      const GlooCommunicatorOptions& options) {
  return CreateGlooCommunicator(std::make_shared<gloo::rendezvous::FileStore>(store_dir), rank,
                                world_size, options);
}

// Runs body(comm) on world_size forked ranks connected by Gloo.
std::vector<ChildResult> RunGlooRanks(int world_size,
                                      const std::function<absl::Status(Communicator&)>& body,
                                      const GlooCommunicatorOptions& options = FastOptions(),
                                      double wait_limit_seconds = 60) {
  return RunForkedRanks(
      world_size,
      [&](int rank, const std::string& dir) -> absl::Status {
        auto comm = Connect(rank, world_size, dir, options);
        if (!comm.ok()) return comm.status();
        return body(**comm);
      },
      wait_limit_seconds);
}

void ExpectAllOk(const std::vector<ChildResult>& results) {
  for (size_t rank = 0; rank < results.size(); ++rank) {
    EXPECT_FALSE(results[rank].hung) << "rank " << rank << " hung";
    EXPECT_EQ(results[rank].exit_code, 0) << "rank " << rank << ": " << results[rank].report;
  }
}

// Every surviving rank ended promptly with a peer-failure status.
void ExpectPeerFailure(const ChildResult& result, int rank) {
  std::cerr << "rank " << rank << " reported: " << result.report << "\n";
  EXPECT_FALSE(result.hung) << "rank " << rank << " hung";
  EXPECT_EQ(result.exit_code, 1) << "rank " << rank << ": " << result.report;
  const absl::StatusCode code = ReportedCode(result);
  EXPECT_TRUE(code == absl::StatusCode::kDeadlineExceeded ||
              code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kAborted)
      << "rank " << rank << ": " << result.report;
}

class GlooWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooWorldTest, AllToAllVProvenanceAllGatherBarrier) {
  ExpectAllOk(RunGlooRanks(GetParam(), [](Communicator& comm) -> absl::Status {
    for (int salt = 0; salt < 6; ++salt) {
      absl::Status status = testing::ProvenanceAllToAllV(comm, salt);
      if (!status.ok()) return status;
    }
    std::vector<int64_t> send(comm.world_size()), recv;
    for (int peer = 0; peer < comm.world_size(); ++peer) send[peer] = comm.rank() * 10 + peer;
    absl::Status status = comm.ExchangeCounts(send, &recv);
    if (!status.ok()) return status;
    for (int peer = 0; peer < comm.world_size(); ++peer) {
      if (recv[peer] != peer * 10 + comm.rank()) {
        return absl::InternalError(absl::StrCat("count from rank ", peer, " is ", recv[peer]));
      }
    }
    const int32_t mine[3] = {comm.rank(), -comm.rank(), 42};
    std::vector<int32_t> all(3 * comm.world_size());
    status = comm.AllGather(mine, sizeof(mine), all.data());
    if (!status.ok()) return status;
    for (int peer = 0; peer < comm.world_size(); ++peer) {
      if (all[3 * peer] != peer || all[3 * peer + 1] != -peer || all[3 * peer + 2] != 42) {
        return absl::InternalError(absl::StrCat("all-gather entry of rank ", peer, " is wrong"));
      }
    }
    return comm.Barrier();
  }));
}

TEST_P(GlooWorldTest, DispatchCombineMatchesTheDirectComputation) {
  const int world_size = GetParam();
  ExpectAllOk(RunGlooRanks(world_size, [world_size](Communicator& comm) -> absl::Status {
    auto tokens = [&](std::vector<int64_t> pattern) {
      std::vector<int64_t> result(world_size);
      for (int rank = 0; rank < world_size; ++rank) result[rank] = pattern[rank % pattern.size()];
      return result;
    };
    std::vector<std::pair<MoeCase, LayerPlacement>> cases;
    auto add = [&](int64_t k, Routing routing, std::vector<int64_t> pattern, int32_t num_experts,
                   bool scale, LayerPlacement placement) {
      MoeCase moe_case;
      moe_case.world_size = world_size;
      moe_case.k = k;
      moe_case.routing = routing;
      moe_case.tokens_per_rank = tokens(pattern);
      moe_case.num_experts = num_experts;
      moe_case.scale_input_by_weight = scale;
      cases.emplace_back(moe_case, std::move(placement));
    };
    add(2, Routing::kRandom, {7, 0, 12}, 8, false,
        LayerPlacement::Contiguous(8, world_size).value());
    add(1, Routing::kSameExpert, {5, 9}, 8, false,
        LayerPlacement::Contiguous(8, world_size).value());
    add(3, Routing::kSpread, {8, 13}, 7, false, LayerPlacement::Contiguous(7, world_size).value());
    add(8, Routing::kRandom, {4, 9, 1}, 16, false,
        LayerPlacement::Contiguous(16, world_size).value());
    add(1, Routing::kRandom, {6, 3}, 8, true, LayerPlacement::Contiguous(8, world_size).value());
    const std::vector<double> loads = {40, 1, 1, 1, 30, 1, 1, 1};
    add(2, Routing::kRandom, {30, 11}, 8, false,
        LayerPlacement::Balanced(8, world_size, world_size > 1 ? 1 : 0, loads).value());
    for (const auto& [moe_case, placement] : cases) {
      absl::Status status = testing::RunAndCheckDispatch(comm, placement, moe_case);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }));
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlooWorldTest, ::testing::Values(1, 2, 4));

// Runs a few provenance all-to-all-vs through a FaultyCommunicator set up by `inject`.
std::vector<ChildResult> RunFaultyGlooRanks(
    int world_size, const std::function<void(FaultyCommunicator&)>& inject) {
  const GlooCommunicatorOptions options = FastOptions();
  return RunForkedRanks(
      world_size,
      [&](int rank, const std::string& dir) -> absl::Status {
        auto comm = Connect(rank, world_size, dir, options);
        if (!comm.ok()) return comm.status();
        FaultyCommunicator faulty(std::move(comm).value(), options.comm);
        inject(faulty);
        for (int salt = 0; salt < 5; ++salt) {
          absl::Status status = testing::ProvenanceAllToAllV(faulty, salt);
          if (!status.ok()) return status;
        }
        return absl::OkStatus();
      },
      /*wait_limit_seconds=*/30);
}

TEST(GlooFaultTest, PeerProcessExitMidAllToAllFailsEveryOtherRank) {
  for (int world_size : {2, 4}) {
    const int victim = world_size - 1;
    const auto results = RunFaultyGlooRanks(world_size, [victim](FaultyCommunicator& faulty) {
      if (faulty.rank() == victim) faulty.KillAfter(2, [] { _exit(3); });
    });
    EXPECT_EQ(results[victim].exit_code, 3) << results[victim].report;
    for (int rank = 0; rank < victim; ++rank) ExpectPeerFailure(results[rank], rank);
  }
}

TEST(GlooFaultTest, PeerStalledPastTheTimeoutFailsEveryRank) {
  for (int world_size : {2, 4}) {
    const auto results = RunFaultyGlooRanks(world_size, [](FaultyCommunicator& faulty) {
      if (faulty.rank() == 1) {
        faulty.InjectAt(1, Fault{Fault::Kind::kDelay, absl::Seconds(3), absl::OkStatus()});
      }
    });
    for (int rank = 0; rank < world_size; ++rank) ExpectPeerFailure(results[rank], rank);
  }
}

TEST(GlooFaultTest, RankThatNeverShowsUpFailsTheRendezvous) {
  GlooCommunicatorOptions options = FastOptions();
  options.comm.connect_timeout = absl::Seconds(2);
  const auto results = RunForkedRanks(
      3,
      [&](int rank, const std::string& dir) -> absl::Status {
        if (rank == 2) return absl::OkStatus();  // never joins
        return Connect(rank, 3, dir, options).status();
      },
      /*wait_limit_seconds=*/30);
  EXPECT_EQ(results[2].exit_code, 0);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_FALSE(results[rank].hung);
    EXPECT_EQ(ReportedCode(results[rank]), absl::StatusCode::kDeadlineExceeded)
        << results[rank].report;
  }
}

TEST(GlooFaultTest, AbortOnOneRankFailsThePeersPromptly) {
  GlooCommunicatorOptions options = FastOptions();
  options.comm.timeout = absl::Seconds(60);  // only the abort can end the peers' wait in time
  const auto results = RunGlooRanks(
      3,
      [](Communicator& comm) -> absl::Status {
        absl::Status status = comm.Barrier();
        if (!status.ok()) return status;
        if (comm.rank() == 0) {
          comm.Abort("operator abort");
          return comm.Barrier();  // fails fast on this rank too
        }
        return testing::ProvenanceAllToAllV(comm, 1);
      },
      options, /*wait_limit_seconds=*/30);
  EXPECT_EQ(ReportedCode(results[0]), absl::StatusCode::kAborted) << results[0].report;
  for (int rank = 1; rank < 3; ++rank) ExpectPeerFailure(results[rank], rank);
}

}  // namespace
}  // namespace switchyard
