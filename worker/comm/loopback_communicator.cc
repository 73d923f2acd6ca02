#include "worker/comm/loopback_communicator.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace switchyard {

std::shared_ptr<LoopbackGroup> LoopbackGroup::Create(int world_size) {
  return std::shared_ptr<LoopbackGroup>(new LoopbackGroup(world_size));
}

LoopbackGroup::LoopbackGroup(int world_size)
    : world_size_(world_size),
      joined_(world_size, false),
      posted_(world_size),
      arrived_(world_size, false) {}

void LoopbackGroup::Abort(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  AbortLocked(reason);
}

absl::Status LoopbackGroup::abort_status() const {
  absl::MutexLock lock(&mu_);
  return abort_status_;
}

void LoopbackGroup::AbortLocked(const std::string& reason) {
  if (abort_status_.ok()) {
    abort_status_ = absl::AbortedError(absl::StrCat("loopback group aborted: ", reason));
  }
  cv_.SignalAll();
}

absl::Status LoopbackGroup::Join(int rank) {
  absl::MutexLock lock(&mu_);
  if (rank < 0 || rank >= world_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("loopback: rank ", rank, " outside [0, ", world_size_, ")"));
  }
  if (joined_[rank]) {
    return absl::InvalidArgumentError(absl::StrCat("loopback: rank ", rank, " already joined"));
  }
  joined_[rank] = true;
  return absl::OkStatus();
}

absl::Status LoopbackGroup::PhaseLocked(int rank, absl::Time deadline, const char* op_name,
                                        const char* phase) {
  if (!abort_status_.ok()) return abort_status_;
  const int64_t generation = generation_;
  arrived_[rank] = true;
  if (++num_arrived_ == world_size_) {
    num_arrived_ = 0;
    arrived_.assign(world_size_, false);
    ++generation_;
    cv_.SignalAll();
    return absl::OkStatus();
  }
  while (generation_ == generation && abort_status_.ok()) {
    if (cv_.WaitWithDeadline(&mu_, deadline)) break;  // true: the deadline passed
  }
  if (generation_ != generation) return absl::OkStatus();
  if (!abort_status_.ok()) return abort_status_;
  std::vector<int> missing;
  for (int peer = 0; peer < world_size_; ++peer) {
    if (!arrived_[peer]) missing.push_back(peer);
  }
  std::string message =
      absl::StrCat("loopback rank ", rank, ": ", op_name, " (", phase,
                   ") timed out waiting for rank(s) ", absl::StrJoin(missing, ","));
  AbortLocked(message);
  return absl::DeadlineExceededError(message);
}

absl::Status LoopbackGroup::Enter(int rank, const Posted& posted, absl::Time deadline,
                                  const char* op_name, std::vector<Posted>* snapshot) {
  absl::MutexLock lock(&mu_);
  if (!abort_status_.ok()) return abort_status_;
  posted_[rank] = posted;
  SY_RETURN_IF_ERROR(PhaseLocked(rank, deadline, op_name, "enter"));
  // Nobody can post again before the exit phase completes, so the snapshot is the whole op.
  *snapshot = posted_;
  return absl::OkStatus();
}

absl::Status LoopbackGroup::Exit(int rank, absl::Time deadline, const char* op_name) {
  absl::MutexLock lock(&mu_);
  return PhaseLocked(rank, deadline, op_name, "exit");
}

namespace {

const char* OpName(int kind) {
  switch (kind) {
    case 0:
      return "all-to-all-v";
    case 1:
      return "all-gather";
    default:
      return "barrier";
  }
}

}  // namespace

// One rank of a LoopbackGroup. Collectives from one thread at a time; Abort from any thread.
class LoopbackCommunicator final : public Communicator {
 public:
  LoopbackCommunicator(std::shared_ptr<LoopbackGroup> group, int rank,
                       const CommunicatorOptions& options)
      : group_(std::move(group)), rank_(rank), options_(options) {
    snapshot_.reserve(group_->world_size());
  }

  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size(); }
  std::string name() const override { return "loopback"; }

  absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override {
    LoopbackGroup::Posted posted;
    posted.kind = LoopbackGroup::OpKind::kAllToAllV;
    posted.send = &send;
    posted.recv = &recv;
    absl::Status status = ValidateAllToAllVBuffer(send, world_size(), "send");
    if (status.ok()) status = ValidateAllToAllVBuffer(recv, world_size(), "recv");
    if (!status.ok()) return Fail(status);
    return Run(posted, [&](const std::vector<LoopbackGroup::Posted>& all) {
      return CopyAllToAllV(all, recv);
    });
  }

  absl::Status AllGather(const void* send_buffer, int64_t num_bytes, void* recv_buffer) override {
    if (num_bytes < 0 || (num_bytes > 0 && (send_buffer == nullptr || recv_buffer == nullptr))) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("loopback rank ", rank_, ": all-gather of ", num_bytes,
                       " bytes needs non-null buffers and a non-negative size")));
    }
    LoopbackGroup::Posted posted;
    posted.kind = LoopbackGroup::OpKind::kAllGather;
    posted.gather_send = send_buffer;
    posted.gather_num_bytes = num_bytes;
    return Run(posted, [&](const std::vector<LoopbackGroup::Posted>& all) -> absl::Status {
      for (int peer = 0; peer < world_size(); ++peer) {
        if (all[peer].gather_num_bytes != num_bytes) {
          return absl::InvalidArgumentError(
              absl::StrCat("loopback rank ", rank_, ": all-gather of ", num_bytes,
                           " bytes, but rank ", peer, " gathers ", all[peer].gather_num_bytes));
        }
        if (num_bytes > 0) {
          std::memcpy(static_cast<char*>(recv_buffer) + peer * num_bytes, all[peer].gather_send,
                      num_bytes);
        }
      }
      return absl::OkStatus();
    });
  }

  absl::Status Barrier() override {
    LoopbackGroup::Posted posted;
    posted.kind = LoopbackGroup::OpKind::kBarrier;
    return Run(posted, [](const std::vector<LoopbackGroup::Posted>&) { return absl::OkStatus(); });
  }

  void Abort(const std::string& reason) override {
    group_->Abort(absl::StrCat("rank ", rank_, ": ", reason));
  }

 private:
  absl::Status Fail(const absl::Status& status) {
    Abort(status.ToString());
    return status;
  }

  // Enter, check that every rank runs the same op, let `body` read the peers' buffers, exit.
  template <typename Body>
  absl::Status Run(const LoopbackGroup::Posted& posted, Body body) {
    const char* op_name = OpName(static_cast<int>(posted.kind));
    const absl::Time deadline = absl::Now() + options_.timeout;
    SY_RETURN_IF_ERROR(group_->Enter(rank_, posted, deadline, op_name, &snapshot_));
    absl::Status status;
    for (int peer = 0; peer < world_size() && status.ok(); ++peer) {
      if (snapshot_[peer].kind != posted.kind) {
        status = absl::InternalError(
            absl::StrCat("loopback rank ", rank_, " runs ", op_name, " but rank ", peer, " runs ",
                         OpName(static_cast<int>(snapshot_[peer].kind)), ": the group desynced"));
      }
    }
    if (status.ok()) status = body(snapshot_);
    // Exit even after an error so no peer is left reading a buffer this rank is about to free.
    absl::Status exit_status = group_->Exit(rank_, deadline, op_name);
    if (!status.ok()) return Fail(status);
    return exit_status;
  }

  absl::Status CopyAllToAllV(const std::vector<LoopbackGroup::Posted>& all,
                             const AllToAllVBuffer& recv) {
    // Every rank checks every pair, so all of them report the same mismatch.
    for (int src = 0; src < world_size(); ++src) {
      for (int dst = 0; dst < world_size(); ++dst) {
        const int64_t sent_bytes = all[src].send->counts_bytes[dst];
        const int64_t expected_bytes = all[dst].recv->counts_bytes[src];
        if (sent_bytes != expected_bytes) {
          return absl::InvalidArgumentError(
              absl::StrCat("loopback all-to-all-v: rank ", dst, " expects ", expected_bytes,
                           " bytes from rank ", src, ", which sends ", sent_bytes));
        }
      }
    }
    for (int peer = 0; peer < world_size(); ++peer) {
      const AllToAllVBuffer& peer_send = *all[peer].send;
      const int64_t num_bytes = recv.counts_bytes[peer];
      if (num_bytes == 0) continue;
      std::memcpy(static_cast<char*>(recv.data) + recv.offsets_bytes[peer],
                  static_cast<const char*>(peer_send.data) + peer_send.offsets_bytes[rank_],
                  num_bytes);
    }
    return absl::OkStatus();
  }

  std::shared_ptr<LoopbackGroup> group_;
  const int rank_;
  const CommunicatorOptions options_;
  std::vector<LoopbackGroup::Posted> snapshot_;
};

absl::StatusOr<std::unique_ptr<Communicator>> CreateLoopbackCommunicator(
    std::shared_ptr<LoopbackGroup> group, int rank, const CommunicatorOptions& options) {
  if (group == nullptr) return absl::InvalidArgumentError("loopback: null group");
  SY_RETURN_IF_ERROR(group->Join(rank));
  return std::unique_ptr<Communicator>(new LoopbackCommunicator(std::move(group), rank, options));
}

}  // namespace switchyard
