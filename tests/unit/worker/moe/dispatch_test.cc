// MoE dispatch/combine over the loopback communicator with 1-4 ranks, against a direct
// single-process computation of the same toy experts.
#include "worker/moe/dispatch.h"

#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "tests/unit/worker/device_like_backend.h"
#include "tests/unit/worker/moe/moe_test_util.h"

namespace switchyard {
namespace {

using testing::MoeCase;
using testing::Routing;
using testing::RunAndCheckDispatch;
using testing::RunLoopbackRanks;

CommunicatorOptions FastOptions() { return testing::TimeoutOptions(absl::Seconds(5)); }

void ExpectDispatchMatches(const MoeCase& moe_case, const LayerPlacement& placement) {
  const auto statuses = RunLoopbackRanks(moe_case.world_size, FastOptions(), [&](Communicator& c) {
    return RunAndCheckDispatch(c, placement, moe_case);
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

MoeCase Case(int world_size, int64_t k, Routing routing, std::vector<int64_t> tokens) {
  MoeCase moe_case;
  moe_case.world_size = world_size;
  moe_case.k = k;
  moe_case.routing = routing;
  moe_case.tokens_per_rank = std::move(tokens);
  return moe_case;
}

// What rank `source` should send under deduplication, derived from its inputs and the
// placement's replica rule alone: choices per destination rank (self included) and token rows per
// destination rank (one per token and rank with at least one choice there; none to itself).
struct ExpectedTraffic {
  std::vector<int64_t> choices;
  std::vector<int64_t> token_rows;
};

ExpectedTraffic ExpectTraffic(const LayerPlacement& placement, const MoeCase& moe_case,
                              int source) {
  const testing::RankInputs in = testing::MakeInputs(moe_case, source);
  ExpectedTraffic expected;
  expected.choices.assign(moe_case.world_size, 0);
  expected.token_rows.assign(moe_case.world_size, 0);
  ReplicaChooser chooser;
  chooser.Reset(placement, source);
  for (int64_t t = 0; t < in.num_tokens; ++t) {
    std::set<int32_t> ranks;
    for (int64_t j = 0; j < moe_case.k; ++j) {
      const PhysicalSlot slot = chooser.Choose(placement, in.ids[t * moe_case.k + j]);
      ++expected.choices[slot.rank];
      if (slot.rank != source) ranks.insert(slot.rank);
    }
    for (int32_t rank : ranks) ++expected.token_rows[rank];
  }
  return expected;
}

// Checks every per-peer figure of `stats` on rank `me` against ExpectTraffic of all ranks.
absl::Status CheckTraffic(const DispatchStats& stats, const LayerPlacement& placement,
                          const MoeCase& moe_case, int me) {
  const int64_t row_bytes = moe_case.hidden * 4;
  const ExpectedTraffic mine = ExpectTraffic(placement, moe_case, me);
  // The entries travel after the token rows, padded to whole rows.
  auto entry_bytes = [&](int64_t num_entries) {
    return (num_entries * kDispatchEntryBytes + row_bytes - 1) / row_bytes * row_bytes;
  };
  for (int peer = 0; peer < moe_case.world_size; ++peer) {
    const ExpectedTraffic theirs = ExpectTraffic(placement, moe_case, peer);
    const int64_t sent = mine.choices[peer], received = theirs.choices[me];
    const int64_t rows_out = mine.token_rows[peer], rows_in = theirs.token_rows[me];
    const bool remote = peer != me;
    const std::vector<std::pair<int64_t, int64_t>> checks = {
        {stats.rows_sent_per_peer[peer], sent},
        {stats.rows_received_per_peer[peer], received},
        {stats.bytes_sent_per_peer[peer], sent * row_bytes},
        {stats.bytes_received_per_peer[peer], received * row_bytes},
        {stats.token_rows_sent_per_peer[peer], rows_out},
        {stats.token_rows_received_per_peer[peer], rows_in},
        {stats.dispatch_bytes_sent_per_peer[peer],
         remote ? rows_out * row_bytes + entry_bytes(sent) : 0},
        {stats.dispatch_bytes_received_per_peer[peer],
         remote ? rows_in * row_bytes + entry_bytes(received) : 0},
        // Back: one row per choice, or one per token row with sum_per_rank.
        {stats.combine_bytes_sent_per_peer[peer],
         remote ? (moe_case.sum_per_rank ? rows_in : received) * row_bytes : 0},
        {stats.combine_bytes_received_per_peer[peer],
         remote ? (moe_case.sum_per_rank ? rows_out : sent) * row_bytes : 0},
    };
    for (size_t i = 0; i < checks.size(); ++i) {
      if (checks[i].first != checks[i].second) {
        return absl::InternalError(absl::StrCat("rank ", me, " peer ", peer, ": traffic figure ", i,
                                                " is ", checks[i].first, ", expected ",
                                                checks[i].second));
      }
    }
  }
  return absl::OkStatus();
}

// Runs `moe_case` on every rank, checks the outputs and every rank's traffic figures; then the
// same with per-rank partial sums on the way back (results within the same tolerance).
void ExpectDispatchAndTraffic(MoeCase moe_case, const LayerPlacement& placement) {
  for (bool sum_per_rank : {false, true}) {
    moe_case.sum_per_rank = sum_per_rank;
    SCOPED_TRACE(sum_per_rank ? "sum_per_rank" : "one row per choice back");
    const auto statuses =
        RunLoopbackRanks(moe_case.world_size, FastOptions(), [&](Communicator& c) {
          DispatchStats stats;
          absl::Status status = RunAndCheckDispatch(c, placement, moe_case, &stats);
          if (!status.ok()) return status;
          return CheckTraffic(stats, placement, moe_case, c.rank());
        });
    for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
  }
}

class DispatchWorldTest : public ::testing::TestWithParam<int> {
 protected:
  int world_size() const { return GetParam(); }
  std::vector<int64_t> Tokens(std::vector<int64_t> pattern) const {
    std::vector<int64_t> tokens(world_size());
    for (int rank = 0; rank < world_size(); ++rank) tokens[rank] = pattern[rank % pattern.size()];
    return tokens;
  }
  LayerPlacement Contiguous(int32_t num_experts) const {
    return LayerPlacement::Contiguous(num_experts, world_size()).value();
  }
  void ExpectProvenance(int64_t k) const;
};

TEST_P(DispatchWorldTest, RandomRoutingTopTwo) {
  ExpectDispatchMatches(Case(world_size(), 2, Routing::kRandom, Tokens({7, 12, 3, 9})),
                        Contiguous(8));
}

TEST_P(DispatchWorldTest, RankWithZeroTokens) {
  ExpectDispatchMatches(Case(world_size(), 2, Routing::kRandom, Tokens({0, 5, 0, 11})),
                        Contiguous(8));
}

TEST_P(DispatchWorldTest, AllRanksWithZeroTokens) {
  ExpectDispatchMatches(Case(world_size(), 2, Routing::kRandom, Tokens({0})), Contiguous(8));
}

TEST_P(DispatchWorldTest, EveryTokenPicksTheSameExpert) {
  ExpectDispatchMatches(Case(world_size(), 1, Routing::kSameExpert, Tokens({6, 9})), Contiguous(8));
}

TEST_P(DispatchWorldTest, EveryRankSendsToEveryRank) {
  MoeCase moe_case = Case(world_size(), 3, Routing::kSpread, Tokens({8, 5, 13}));
  moe_case.num_experts = 7;
  const LayerPlacement placement = Contiguous(7);  // remainder shards
  const auto statuses = RunLoopbackRanks(world_size(), FastOptions(), [&](Communicator& comm) {
    DispatchStats stats;
    absl::Status status = RunAndCheckDispatch(comm, placement, moe_case, &stats);
    if (!status.ok()) return status;
    for (int peer = 0; peer < comm.world_size(); ++peer) {
      if (stats.rows_sent_per_peer[peer] == 0 || stats.rows_received_per_peer[peer] == 0 ||
          stats.bytes_sent_per_peer[peer] != stats.rows_sent_per_peer[peer] * 16 * 4) {
        return absl::InternalError(absl::StrCat("rank ", comm.rank(), ": peer ", peer,
                                                " exchanged no rows or wrong bytes"));
      }
    }
    return absl::OkStatus();
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

TEST_P(DispatchWorldTest, TopOneAndTopEight) {
  ExpectDispatchMatches(Case(world_size(), 1, Routing::kRandom, Tokens({10, 3})), Contiguous(8));
  MoeCase top8 = Case(world_size(), 8, Routing::kRandom, Tokens({4, 9, 1}));
  top8.num_experts = 16;
  ExpectDispatchMatches(top8, Contiguous(16));
}

TEST_P(DispatchWorldTest, ScaleInputByWeight) {
  MoeCase moe_case = Case(world_size(), 1, Routing::kRandom, Tokens({6, 2, 9}));
  moe_case.scale_input_by_weight = true;
  ExpectDispatchMatches(moe_case, Contiguous(8));
  moe_case.k = 4;
  ExpectDispatchMatches(moe_case, Contiguous(8));
}

TEST_P(DispatchWorldTest, MoreRanksThanExpertsAndOddHidden) {
  MoeCase moe_case = Case(world_size(), 1, Routing::kRandom, Tokens({5, 3}));
  moe_case.num_experts = 2;
  moe_case.hidden = 3;
  ExpectDispatchMatches(moe_case, Contiguous(2));
}

// Provenance through dispatch (as DeepEP's tests do): each token row carries {source rank, token
// index}; every local slot must receive exactly the rows of the tokens that chose its expert, in
// (source rank, token) order — also when a token's row crossed to a rank once for several of its
// choices — and the combine must still match the reference.
void DispatchWorldTest::ExpectProvenance(int64_t k) const {
  const int world_size = this->world_size();
  MoeCase moe_case = Case(world_size, k, Routing::kRandom, Tokens({9, 0, 14, 5}));
  moe_case.hidden = 4;
  const LayerPlacement placement = Contiguous(8);
  std::vector<testing::RankInputs> inputs;
  for (int rank = 0; rank < world_size; ++rank) {
    inputs.push_back(testing::MakeInputs(moe_case, rank));
    for (int64_t t = 0; t < inputs[rank].num_tokens; ++t) {
      float* row = inputs[rank].x.data() + t * 4;
      row[0] = static_cast<float>(rank);
      row[1] = static_cast<float>(t);
      row[2] = 0.25f;
      row[3] = 0.5f;
    }
  }
  auto chose = [&](int src, int64_t t, int32_t expert) {
    for (int64_t j = 0; j < k; ++j) {
      if (inputs[src].ids[t * k + j] == expert) return true;
    }
    return false;
  };
  const auto statuses = RunLoopbackRanks(world_size, FastOptions(), [&](Communicator& comm) {
    const int me = comm.rank();
    const GroupedExpertFn toy = testing::ToyExperts(placement, me);
    GroupedExpertFn checking = [&](const Tensor& row_tensor, std::span<const int64_t> offsets,
                                   const Tensor& out) -> absl::Status {
      const int64_t num_slots = static_cast<int64_t>(offsets.size()) - 1;
      const int64_t hidden = row_tensor.dim(1);
      const float* rows = row_tensor.data_as<const float>();
      for (int64_t slot = 0; slot < num_slots; ++slot) {
        const int32_t expert = placement.expert_at(me, static_cast<int32_t>(slot));
        int64_t row_idx = offsets[slot];
        for (int src = 0; src < world_size; ++src) {
          for (int64_t t = 0; t < inputs[src].num_tokens; ++t) {
            if (!chose(src, t, expert)) continue;
            const float* row = rows + row_idx * hidden;
            if (row_idx >= offsets[slot + 1] || row[0] != src || row[1] != t || row[2] != 0.25f ||
                row[3] != 0.5f) {
              return absl::InternalError(absl::StrCat("rank ", me, " slot ", slot, ": row ",
                                                      row_idx, " is not token ", t, " of rank ",
                                                      src));
            }
            ++row_idx;
          }
        }
        if (row_idx != offsets[slot + 1]) {
          return absl::InternalError(absl::StrCat("rank ", me, " slot ", slot, ": extra rows"));
        }
      }
      return toy(row_tensor, offsets, out);
    };
    const testing::RankInputs& in = inputs[me];
    std::vector<float> out(in.num_tokens * 4);
    absl::Status status =
        MoeDispatchCombine(comm, placement, in.x.data(), in.num_tokens, 4, in.ids.data(),
                           in.weights.data(), k, checking, out.data(), nullptr);
    if (!status.ok()) return status;
    return testing::CompareOutputs(testing::ReferenceOutput(moe_case, in), out, me);
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

TEST_P(DispatchWorldTest, ProvenanceRowsReachTheirExpertInOrder) { ExpectProvenance(1); }

// Replicated experts: results unchanged, and each expert's rows spread evenly over its replicas.
TEST_P(DispatchWorldTest, ReplicatedExpertsBalanceOverReplicas) {
  if (world_size() == 1) GTEST_SKIP() << "replicas need two ranks";
  const int32_t num_experts = 8;
  std::vector<double> loads = {40, 1, 1, 1, 30, 1, 1, 1};
  const LayerPlacement placement =
      LayerPlacement::Balanced(num_experts, world_size(), 2, loads, /*version=*/5).value();
  const MoeCase moe_case = Case(world_size(), 2, Routing::kRandom, Tokens({40, 17, 33}));
  std::mutex mu;
  std::map<std::pair<int, int>, int64_t> rows_per_slot;  // (rank, slot) -> rows
  const auto statuses = RunLoopbackRanks(world_size(), FastOptions(), [&](Communicator& comm) {
    DispatchStats stats;
    absl::Status status = RunAndCheckDispatch(comm, placement, moe_case, &stats);
    std::lock_guard<std::mutex> lock(mu);
    for (size_t slot = 0; slot < stats.rows_per_local_slot.size(); ++slot) {
      rows_per_slot[{comm.rank(), static_cast<int>(slot)}] = stats.rows_per_local_slot[slot];
    }
    return status;
  });
  for (const auto& status : statuses) ASSERT_TRUE(status.ok()) << status;
  // Independent count of the rows routed to each expert.
  std::vector<int64_t> routed(num_experts, 0);
  for (int rank = 0; rank < world_size(); ++rank) {
    for (int32_t id : testing::MakeInputs(moe_case, rank).ids) ++routed[id];
  }
  int num_replicated = 0;
  for (int32_t expert = 0; expert < num_experts; ++expert) {
    int64_t total = 0, lowest = INT64_MAX, highest = 0;
    for (const PhysicalSlot& slot : placement.replicas(expert)) {
      const int64_t rows = rows_per_slot[{slot.rank, slot.local_slot}];
      total += rows;
      lowest = std::min(lowest, rows);
      highest = std::max(highest, rows);
    }
    EXPECT_EQ(total, routed[expert]) << "expert " << expert;
    // Each source rank splits its rows within one of even, so replicas differ by <= world size.
    EXPECT_LE(highest - lowest, world_size()) << "expert " << expert;
    if (placement.num_replicas(expert) > 1) ++num_replicated;
  }
  EXPECT_GT(num_replicated, 0);
  EXPECT_GT(placement.num_replicas(0), 1);  // the hottest expert got a replica
}

// The dispatcher's buffers come from the backend (a stand-in that counts allocations): after the
// largest batch, smaller ones, an empty one included, allocate nothing.
TEST_P(DispatchWorldTest, WarmDispatcherReusesBuffersAcrossBatchSizes) {
  const LayerPlacement placement = Contiguous(8);
  const auto statuses = RunLoopbackRanks(world_size(), FastOptions(), [&](Communicator& comm) {
    testing::DeviceLikeBackend backend;
    MoeDispatcher dispatcher(&comm, &backend);
    bool after_largest = false;
    for (int64_t tokens : {9, 2, 15, 0, 4, 15}) {
      MoeCase moe_case = Case(world_size(), 2, Routing::kRandom,
                              std::vector<int64_t>(world_size(), tokens));
      moe_case.seed = static_cast<uint32_t>(tokens + 3);
      const testing::RankInputs in = testing::MakeInputs(moe_case, comm.rank());
      absl::StatusOr<Tensor> x = backend.Empty(DType::kF32, {in.num_tokens, moe_case.hidden});
      absl::StatusOr<Tensor> out = backend.Empty(DType::kF32, {in.num_tokens, moe_case.hidden});
      if (!x.ok() || !out.ok()) return absl::InternalError("allocating x or out failed");
      if (absl::Status s = backend.CopyFromHost(in.x, *x); !s.ok()) return s;
      const int64_t allocations_before = backend.num_allocations();
      absl::Status status =
          dispatcher.Run(placement, *x, in.ids, in.weights, moe_case.k,
                         testing::ToyExperts(placement, comm.rank()), *out, nullptr);
      if (!status.ok()) return status;
      const int64_t allocated = backend.num_allocations() - allocations_before;
      if (after_largest && allocated != 0) {
        return absl::InternalError(absl::StrCat("rank ", comm.rank(), ": a batch of ", tokens,
                                                " tokens after one of 15 allocated ", allocated,
                                                " buffers"));
      }
      after_largest = after_largest || tokens == 15;
      std::vector<float> host_out(in.num_tokens * moe_case.hidden);
      if (absl::Status s = backend.CopyToHost(*out, host_out); !s.ok()) return s;
      status =
          testing::CompareOutputs(testing::ReferenceOutput(moe_case, in), host_out, comm.rank());
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

// Deduplication: a token with several choices on one rank sends its row there once, with one
// entry per choice; the receiver expands it to every chosen slot.
TEST_P(DispatchWorldTest, TokenRowGoesOnceToEachRank) {
  const MoeCase moe_case = Case(world_size(), 4, Routing::kRandom, Tokens({7, 12, 3, 9}));
  const LayerPlacement placement = Contiguous(8);
  if (world_size() > 1) {  // the case must exercise deduplication
    const ExpectedTraffic expected = ExpectTraffic(placement, moe_case, 0);
    int64_t remote_choices = 0, remote_rows = 0;
    for (int rank = 1; rank < world_size(); ++rank) {
      remote_choices += expected.choices[rank];
      remote_rows += expected.token_rows[rank];
    }
    ASSERT_GT(remote_rows, 0);
    ASSERT_LT(remote_rows, remote_choices);
  }
  ExpectDispatchAndTraffic(moe_case, placement);
}

// Top-8 with all eight choices of every token on one rank: one token row and eight entries.
TEST_P(DispatchWorldTest, TopEightAllOnOneRank) {
  MoeCase moe_case = Case(world_size(), 8, Routing::kOneBlock, Tokens({5, 0, 9, 3}));
  moe_case.num_experts = 8 * world_size();
  const LayerPlacement placement = Contiguous(moe_case.num_experts);
  for (int rank = 0; rank < world_size(); ++rank) {
    const ExpectedTraffic expected = ExpectTraffic(placement, moe_case, rank);
    for (int peer = 0; peer < world_size(); ++peer) {
      if (peer != rank) {
        EXPECT_EQ(expected.choices[peer], 8 * expected.token_rows[peer]);
      }
    }
  }
  ExpectDispatchAndTraffic(moe_case, placement);
  moe_case.scale_input_by_weight = true;  // the receiver scales each expanded copy by its weight
  ExpectDispatchAndTraffic(moe_case, placement);
}

// Replicas with several choices per rank: a token's choices may land on replicas of different
// ranks; each rank still gets the row once and the results do not change.
TEST_P(DispatchWorldTest, ReplicasWithSeveralChoicesPerRank) {
  if (world_size() == 1) GTEST_SKIP() << "replicas need two ranks";
  std::vector<double> loads = {50, 3, 1, 1, 30, 1, 20, 1};
  const LayerPlacement placement = LayerPlacement::Balanced(8, world_size(), 2, loads).value();
  ExpectDispatchAndTraffic(Case(world_size(), 4, Routing::kRandom, Tokens({21, 6, 0, 13})),
                           placement);
  MoeCase scaled = Case(world_size(), 3, Routing::kRandom, Tokens({11, 17}));
  scaled.scale_input_by_weight = true;
  ExpectDispatchAndTraffic(scaled, placement);
}

// Zero tokens on some or all ranks: nothing moves from them, every figure is zero-sized right.
TEST_P(DispatchWorldTest, ZeroTokensTraffic) {
  ExpectDispatchAndTraffic(Case(world_size(), 4, Routing::kRandom, Tokens({0})), Contiguous(8));
  ExpectDispatchAndTraffic(Case(world_size(), 4, Routing::kRandom, Tokens({0, 6, 0, 2})),
                           Contiguous(8));
  MoeCase top8 = Case(world_size(), 8, Routing::kOneBlock, Tokens({3, 0}));
  top8.num_experts = 8 * world_size();
  ExpectDispatchAndTraffic(top8, Contiguous(top8.num_experts));
}

TEST_P(DispatchWorldTest, ProvenanceWithSeveralChoicesPerRank) { ExpectProvenance(3); }

INSTANTIATE_TEST_SUITE_P(Ranks, DispatchWorldTest, ::testing::Values(1, 2, 3, 4));

TEST(DispatchTest, BadExpertIdFailsHereAndAbortsThePeers) {
  const LayerPlacement placement = LayerPlacement::Contiguous(4, 2).value();
  const auto statuses = RunLoopbackRanks(2, FastOptions(), [&](Communicator& comm) {
    const float x[2] = {1, 2};
    const int32_t ids[1] = {comm.rank() == 0 ? 9 : 1};
    const float weights[1] = {1};
    float out[2];
    return MoeDispatchCombine(comm, placement, x, 1, 2, ids, weights, 1,
                              testing::ToyExperts(placement, comm.rank()), out, nullptr);
  });
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kInvalidArgument) << statuses[0];
  EXPECT_TRUE(absl::StrContains(statuses[0].message(), "expert 9")) << statuses[0];
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kAborted) << statuses[1];
}

TEST(DispatchTest, ExpertErrorPropagatesAndAbortsThePeers) {
  const LayerPlacement placement = LayerPlacement::Contiguous(4, 2).value();
  const auto statuses = RunLoopbackRanks(2, FastOptions(), [&](Communicator& comm) {
    const float x[2] = {1, 2};
    const int32_t ids[1] = {0};
    const float weights[1] = {1};
    float out[2];
    GroupedExpertFn experts = testing::ToyExperts(placement, comm.rank());
    if (comm.rank() == 0) {
      experts = [](const Tensor&, std::span<const int64_t>, const Tensor&) {
        return absl::ResourceExhaustedError("out of scratch memory");
      };
    }
    return MoeDispatchCombine(comm, placement, x, 1, 2, ids, weights, 1, experts, out, nullptr);
  });
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kResourceExhausted) << statuses[0];
  EXPECT_TRUE(IsPeerFailure(statuses[1])) << statuses[1];
}

// Forwards to a host communicator; on its second all-to-all-v (the rows, after the counts) it
// rewrites every entry received from rank 1 to name local slot 0: entries that disagree with the
// counts rank 1 announced. Rows of 3 floats are exactly one 12-byte entry wide, so an entry region
// of n entries is the last n rows of that peer's region.
class EntryCorruptingCommunicator final : public Communicator {
 public:
  explicit EntryCorruptingCommunicator(std::unique_ptr<Communicator> inner)
      : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string name() const override { return "corrupting(" + inner_->name() + ")"; }
  absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override {
    absl::Status status = inner_->AllToAllV(send, recv);
    if (!status.ok() || ++num_calls_ != 2 || recv.counts_bytes[1] == 0) return status;
    // Rank 1's region: [n token rows][n entries], 12 bytes each.
    char* region = static_cast<char*>(recv.data) + recv.offsets_bytes[1];
    const int64_t n = recv.counts_bytes[1] / (2 * kDispatchEntryBytes);
    for (int64_t e = 0; e < n; ++e) {
      MoeDispatcher::Entry entry;
      std::memcpy(&entry, region + (n + e) * kDispatchEntryBytes, sizeof(entry));
      entry.slot = 0;
      std::memcpy(region + (n + e) * kDispatchEntryBytes, &entry, sizeof(entry));
    }
    return status;
  }
  absl::Status AllGather(const void* send, int64_t num_bytes, void* recv) override {
    return inner_->AllGather(send, num_bytes, recv);
  }
  absl::Status Barrier() override { return inner_->Barrier(); }
  void Abort(const std::string& reason) override { inner_->Abort(reason); }

 private:
  std::unique_ptr<Communicator> inner_;
  int num_calls_ = 0;
};

TEST(DispatchTest, EntriesThatDisagreeWithTheCountsFailInsteadOfWritingPastTheirRange) {
  const LayerPlacement placement = LayerPlacement::Contiguous(4, 2).value();  // rank 0: 0, 1
  const auto statuses = RunLoopbackRanks(
      2, FastOptions(),
      [&](Communicator& comm) {
        // Rank 1 sends token 0 to expert 0 and token 1 to expert 1, both on rank 0.
        const float x[6] = {1, 2, 3, 4, 5, 6};
        const int32_t ids[2] = {0, 1};
        const float weights[2] = {1, 1};
        float out[6];
        const int64_t num_tokens = comm.rank() == 1 ? 2 : 0;
        return MoeDispatchCombine(comm, placement, x, num_tokens, 3, ids, weights, 1,
                                  testing::ToyExperts(placement, comm.rank()), out, nullptr);
      },
      [](std::unique_ptr<Communicator> inner) -> std::unique_ptr<Communicator> {
        if (inner->rank() != 0) return inner;
        return std::make_unique<EntryCorruptingCommunicator>(std::move(inner));
      });
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kInternal) << statuses[0];
  EXPECT_TRUE(absl::StrContains(statuses[0].message(), "more entries for that slot"))
      << statuses[0];
  EXPECT_TRUE(IsPeerFailure(statuses[1])) << statuses[1];
}

TEST(DispatchTest, PlacementForAnotherWorldSizeIsRejected) {
  const LayerPlacement placement = LayerPlacement::Contiguous(4, 3).value();
  const auto statuses = RunLoopbackRanks(2, FastOptions(), [&](Communicator& comm) {
    float out[1];
    return MoeDispatchCombine(comm, placement, nullptr, 0, 1, nullptr, nullptr, 1,
                              testing::ToyExperts(placement, comm.rank()), out, nullptr);
  });
  for (const auto& status : statuses) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
}

}  // namespace
}  // namespace switchyard
