// Scheduler::CheckInvariants: the cross-structure checks the tests run after every step.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "coordinator/scheduler/scheduler.h"

namespace switchyard {
namespace {

absl::Status Broken(const Sequence& seq, absl::string_view what) {
  return absl::InternalError(
      absl::StrCat("sequence ", seq.seq_id, " (", seq.request_id, "): ", what));
}

}  // namespace

absl::Status Scheduler::CheckWorkerInvariants(int32_t rank) const {
  const Worker& worker = workers_[rank];
  const BlockManager& blocks = *worker.blocks;
  if (absl::Status s = blocks.Validate(); !s.ok()) {
    return absl::InternalError(absl::StrCat("worker ", rank, ": ", s.message()));
  }
  std::vector<int32_t> refs(blocks.num_blocks(), 0);
  int64_t num_running = 0;
  for (const Sequence* seq : running_) {
    if (seq->home_rank != rank) continue;
    ++num_running;
    for (size_t i = 0; i < seq->block_table.size(); ++i) {
      const int32_t block = seq->block_table[i];
      ++refs[block];
      if (!blocks.is_cached(block)) continue;
      if (static_cast<int64_t>(i) >= seq->num_registered_blocks ||
          blocks.hash_of(block) != seq->block_hashes[i]) {
        return Broken(*seq, absl::StrCat("cached block ", block, " at table index ", i,
                                         " does not hold this sequence's tokens"));
      }
    }
  }
  for (int64_t block = 0; block < blocks.num_blocks(); ++block) {
    if (refs[block] != blocks.ref_count(block)) {
      return absl::InternalError(absl::StrCat("worker ", rank, ": block ", block, " has ref_count ",
                                              blocks.ref_count(block), " but ", refs[block],
                                              " block tables name it"));
    }
    if (refs[block] > 1 && !blocks.is_cached(block)) {
      return absl::InternalError(absl::StrCat("worker ", rank, ": uncached block ", block,
                                              " is owned by ", refs[block], " sequences"));
    }
  }
  if (num_running != worker.num_running || num_running > options_.max_num_seqs) {
    return absl::InternalError(absl::StrCat("worker ", rank, ": ", num_running,
                                            " running sequences, counter ", worker.num_running,
                                            ", cap ", options_.max_num_seqs));
  }
  return absl::OkStatus();
}

absl::Status Scheduler::CheckInvariants() const {
  for (size_t rank = 0; rank < workers_.size(); ++rank) {
    if (!workers_[rank].live) continue;
    if (absl::Status s = CheckWorkerInvariants(static_cast<int32_t>(rank)); !s.ok()) return s;
  }
  if (running_.size() + waiting_.size() != seqs_.size() || id_to_seq_.size() != seqs_.size()) {
    return absl::InternalError(absl::StrCat(running_.size(), " running + ", waiting_.size(),
                                            " waiting, but ", seqs_.size(), " live sequences and ",
                                            id_to_seq_.size(), " ids"));
  }
  for (size_t i = 0; i < running_.size(); ++i) {
    const Sequence& seq = *running_[i];
    if (i > 0 && running_[i - 1]->arrival_idx >= seq.arrival_idx) {
      return Broken(seq, "running list out of arrival order");
    }
    if (seq.state != SequenceState::kRunning || seq.home_rank < 0 ||
        !workers_[seq.home_rank].live) {
      return Broken(seq, "in the running list without a live home");
    }
    const int64_t num_table = static_cast<int64_t>(seq.block_table.size());
    if (num_table < BlocksFor(seq.num_computed_tokens + seq.inflight_num_tokens) ||
        num_table > BlocksFor(seq.num_tokens())) {
      return Broken(seq, absl::StrCat(num_table, " blocks for ", seq.num_computed_tokens,
                                      " computed of ", seq.num_tokens(), " tokens"));
    }
    if (seq.num_computed_tokens >= seq.num_tokens() && seq.last_scheduled_step != step_id_) {
      return Broken(seq, "every token computed but no sample pending");
    }
  }
  for (size_t i = 0; i < waiting_.size(); ++i) {
    const Sequence* seq = waiting_[i];
    if (i > 0 && waiting_[i - 1]->arrival_idx >= seq->arrival_idx) {
      return Broken(*seq, "waiting queue out of arrival order");
    }
    if (seq->state != SequenceState::kWaiting || !seq->block_table.empty() ||
        seq->home_rank != -1 || seq->num_computed_tokens != 0) {
      return Broken(*seq, "waiting but placed");
    }
  }
  for (const auto& [id, seq_id] : id_to_seq_) {
    const Sequence* seq = FindSequence(seq_id);
    if (seq == nullptr || seq->request_id != id) {
      return absl::InternalError(absl::StrCat("request id ", id, " maps to a wrong sequence"));
    }
  }
  for (const auto& [deadline, seq_id] : deadlines_) {
    if (FindSequence(seq_id) == nullptr) {
      return absl::InternalError(absl::StrCat("deadline of a dead sequence ", seq_id));
    }
  }
  return absl::OkStatus();
}

}  // namespace switchyard
