// Loopback communicator: all-to-all-v with provenance payloads, all-gather, barrier, timeouts,
// abort, and the fault-injecting wrapper over it.
#include "worker/comm/loopback_communicator.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "worker/comm/faulty_communicator.h"

namespace switchyard {
namespace {

using testing::ProvenanceAllToAllV;
using testing::RunLoopbackRanks;

CommunicatorOptions FastOptions() { return testing::TimeoutOptions(absl::Seconds(2)); }

class LoopbackWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(LoopbackWorldTest, AllToAllVProvenanceUnevenAndZeroCounts) {
  const auto statuses = RunLoopbackRanks(GetParam(), FastOptions(), [](Communicator& comm) {
    for (int salt = 0; salt < 5; ++salt) {
      absl::Status status = ProvenanceAllToAllV(comm, salt);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

TEST_P(LoopbackWorldTest, ExchangeCountsDeliversEachPeersValue) {
  const auto statuses = RunLoopbackRanks(GetParam(), FastOptions(), [](Communicator& comm) {
    std::vector<int64_t> send(comm.world_size()), recv;
    for (int peer = 0; peer < comm.world_size(); ++peer) send[peer] = comm.rank() * 100 + peer;
    absl::Status status = comm.ExchangeCounts(send, &recv);
    if (!status.ok()) return status;
    for (int peer = 0; peer < comm.world_size(); ++peer) {
      if (recv[peer] != peer * 100 + comm.rank()) {
        return absl::InternalError(
            absl::StrCat("rank ", comm.rank(), " got ", recv[peer], " from rank ", peer));
      }
    }
    return absl::OkStatus();
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

TEST_P(LoopbackWorldTest, AllGatherAndBarrier) {
  const auto statuses = RunLoopbackRanks(GetParam(), FastOptions(), [](Communicator& comm) {
    const int64_t mine[2] = {comm.rank(), comm.rank() * 7 + 1};
    std::vector<int64_t> all(2 * comm.world_size(), -1);
    absl::Status status = comm.AllGather(mine, sizeof(mine), all.data());
    if (!status.ok()) return status;
    for (int peer = 0; peer < comm.world_size(); ++peer) {
      if (all[2 * peer] != peer || all[2 * peer + 1] != peer * 7 + 1) {
        return absl::InternalError(absl::StrCat("rank ", comm.rank(), ": wrong entry of ", peer));
      }
    }
    return comm.Barrier();
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

INSTANTIATE_TEST_SUITE_P(Ranks, LoopbackWorldTest, ::testing::Values(1, 2, 3, 4));

TEST(LoopbackTest, RankThatNeverArrivesTimesOutTheOthers) {
  const auto statuses = RunLoopbackRanks(4, FastOptions(), [](Communicator& comm) {
    absl::Status status = ProvenanceAllToAllV(comm, 1);
    if (!status.ok() || comm.rank() == 2) return status;  // rank 2 skips the second call
    return ProvenanceAllToAllV(comm, 2);
  });
  EXPECT_TRUE(statuses[2].ok()) << statuses[2];
  for (int rank : {0, 1, 3}) {
    EXPECT_TRUE(IsPeerFailure(statuses[rank])) << statuses[rank];
  }
  // Whoever timed out first names the missing rank.
  bool named = false;
  for (int rank : {0, 1, 3}) {
    named = named || (statuses[rank].code() == absl::StatusCode::kDeadlineExceeded &&
                      absl::StrContains(statuses[rank].message(), "rank(s) 2"));
  }
  EXPECT_TRUE(named);
}

TEST(LoopbackTest, AbortWakesPendingCallsAndFailsLaterOnes) {
  auto group = LoopbackGroup::Create(3);
  CommunicatorOptions options;
  options.timeout = absl::Seconds(60);  // far beyond the test: only Abort can end the wait
  std::vector<absl::Status> statuses(3);
  std::vector<absl::Time> started(2), ended(2);
  std::atomic<int> entered{0};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = CreateLoopbackCommunicator(group, rank, options).value();
      started[rank] = absl::Now();
      ++entered;
      statuses[rank] = comm->Barrier();  // rank 2 never arrives
      ended[rank] = absl::Now();
    });
  }
  auto comm2 = CreateLoopbackCommunicator(group, 2, options).value();
  while (entered.load() < 2) absl::SleepFor(absl::Milliseconds(1));
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time aborted = absl::Now();
  comm2->Abort("test abort");
  for (auto& thread : threads) thread.join();
  for (int rank = 0; rank < 2; ++rank) {
    // The call was in progress when the abort came: it began before and returned after.
    EXPECT_LT(started[rank], aborted) << "rank " << rank;
    EXPECT_GE(ended[rank], aborted) << "rank " << rank;
    EXPECT_EQ(statuses[rank].code(), absl::StatusCode::kAborted) << statuses[rank];
    EXPECT_TRUE(absl::StrContains(statuses[rank].message(), "test abort")) << statuses[rank];
  }
  EXPECT_EQ(comm2->Barrier().code(), absl::StatusCode::kAborted);
}

TEST(LoopbackTest, MismatchedCountsFailOnEveryRank) {
  const auto statuses = RunLoopbackRanks(2, FastOptions(), [](Communicator& comm) {
    int64_t send_data[2] = {1, 2};
    int64_t recv_data[4] = {};
    AllToAllVBuffer send{send_data, {8, 8}, {}};
    // Rank 1 expects 16 bytes from rank 0, which sends 8.
    AllToAllVBuffer recv{
        recv_data, comm.rank() == 1 ? std::vector<int64_t>{16, 8} : std::vector<int64_t>{8, 8}, {}};
    PackOffsets(&send);
    PackOffsets(&recv);
    return comm.AllToAllV(send, recv);
  });
  for (const auto& status : statuses) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
}

TEST(LoopbackTest, JoinRejectsBadAndDuplicateRanks) {
  auto group = LoopbackGroup::Create(2);
  EXPECT_EQ(CreateLoopbackCommunicator(group, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(CreateLoopbackCommunicator(group, 0).ok());
  EXPECT_EQ(CreateLoopbackCommunicator(group, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Faulty wrapper over loopback: a stalled or killed peer mid-all-to-all.
TEST(FaultyLoopbackTest, StalledPeerPastTimeoutFailsEveryOtherRank) {
  const CommunicatorOptions options = FastOptions();
  const auto statuses = RunLoopbackRanks(
      3, options,
      [](Communicator& comm) {
        for (int salt = 0; salt < 3; ++salt) {
          absl::Status status = ProvenanceAllToAllV(comm, salt);
          if (!status.ok()) return status;
        }
        return absl::OkStatus();
      },
      [&](std::unique_ptr<Communicator> inner) -> std::unique_ptr<Communicator> {
        const int rank = inner->rank();
        auto faulty = std::make_unique<FaultyCommunicator>(std::move(inner), options);
        if (rank == 1) {
          faulty->InjectAt(1, Fault{Fault::Kind::kDelay, options.timeout * 2, absl::OkStatus()});
        }
        return faulty;
      });
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_TRUE(IsPeerFailure(statuses[rank])) << "rank " << rank << ": " << statuses[rank];
  }
}

TEST(FaultyLoopbackTest, KilledPeerFailsEveryOtherRank) {
  const CommunicatorOptions options = FastOptions();
  const auto statuses = RunLoopbackRanks(
      4, options,
      [](Communicator& comm) {
        for (int salt = 0; salt < 4; ++salt) {
          absl::Status status = ProvenanceAllToAllV(comm, salt);
          if (!status.ok()) return status;
        }
        return absl::OkStatus();
      },
      [&](std::unique_ptr<Communicator> inner) -> std::unique_ptr<Communicator> {
        const int rank = inner->rank();
        auto faulty = std::make_unique<FaultyCommunicator>(std::move(inner), options);
        if (rank == 3) faulty->KillAfter(2);
        return faulty;
      });
  EXPECT_EQ(statuses[3].code(), absl::StatusCode::kUnavailable) << statuses[3];
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_TRUE(IsPeerFailure(statuses[rank])) << "rank " << rank << ": " << statuses[rank];
  }
}

TEST(FaultyLoopbackTest, DroppedAndFailedCalls) {
  const CommunicatorOptions options = FastOptions();
  const auto statuses = RunLoopbackRanks(
      2, options, [](Communicator& comm) { return comm.Barrier(); },
      [&](std::unique_ptr<Communicator> inner) -> std::unique_ptr<Communicator> {
        const int rank = inner->rank();
        auto faulty = std::make_unique<FaultyCommunicator>(std::move(inner), options);
        if (rank == 0) faulty->InjectAt(0, Fault{Fault::Kind::kDrop});
        return faulty;
      });
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kDeadlineExceeded) << statuses[0];
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kDeadlineExceeded) << statuses[1];

  auto group = LoopbackGroup::Create(1);
  FaultyCommunicator faulty(CreateLoopbackCommunicator(group, 0, options).value(), options);
  faulty.InjectAt(
      1, Fault{Fault::Kind::kFail, absl::ZeroDuration(), absl::UnavailableError("link down")});
  EXPECT_TRUE(faulty.Barrier().ok());
  const absl::Status failed = faulty.Barrier();
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(failed.message(), "link down")) << failed;
  EXPECT_TRUE(faulty.Barrier().ok());
  EXPECT_EQ(faulty.num_calls(), 3);
}

}  // namespace
}  // namespace switchyard
