// In-process loopback communicator: ranks are threads of one process that share a LoopbackGroup.
//
// Used by unit and integration tests (and the single-process engine) to run the real data plane
// without sockets. Every collective really copies bytes between the ranks' buffers and honours
// CommunicatorOptions::timeout: a rank that never arrives makes the others fail with
// DEADLINE_EXCEEDED, after which the whole group is aborted (fail-stop, like the other transports).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/comm/communicator.h"

namespace switchyard {

// The shared state of one loopback group. Create it once, hand it to world_size threads, and let
// each build its communicator with CreateLoopbackCommunicator(group, rank). Thread-safe. Owned by
// shared_ptr: each communicator keeps the group alive.
class LoopbackGroup {
 public:
  static std::shared_ptr<LoopbackGroup> Create(int world_size);

  int world_size() const { return world_size_; }

  // Fails every pending and future collective of every rank with ABORTED(reason).
  void Abort(const std::string& reason);

  // OK, or the ABORTED status the group was aborted with.
  absl::Status abort_status() const;

 private:
  friend class LoopbackCommunicator;
  friend absl::StatusOr<std::unique_ptr<Communicator>> CreateLoopbackCommunicator(
      std::shared_ptr<LoopbackGroup> group, int rank, const CommunicatorOptions& options);

  enum class OpKind { kAllToAllV, kAllGather, kBarrier };
  // What one rank brought to the current collective. The pointers stay valid until the collective's
  // exit phase completes on every rank.
  struct Posted {
    OpKind kind = OpKind::kBarrier;
    const AllToAllVBuffer* send = nullptr;
    const AllToAllVBuffer* recv = nullptr;
    const void* gather_send = nullptr;
    int64_t gather_num_bytes = 0;
  };

  explicit LoopbackGroup(int world_size);

  absl::Status Join(int rank);
  // Posts this rank's arguments and waits (until `deadline`) for every rank to post; then
  // `snapshot` receives every rank's arguments.
  absl::Status Enter(int rank, const Posted& posted, absl::Time deadline, const char* op_name,
                     std::vector<Posted>* snapshot);
  // Waits (until `deadline`) for every rank to finish reading the others' buffers.
  absl::Status Exit(int rank, absl::Time deadline, const char* op_name);
  absl::Status PhaseLocked(int rank, absl::Time deadline, const char* op_name, const char* phase)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AbortLocked(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int world_size_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<bool> joined_ ABSL_GUARDED_BY(mu_);
  std::vector<Posted> posted_ ABSL_GUARDED_BY(mu_);
  // A reusable barrier: arrived_[r] for the current phase; generation_ counts completed phases.
  std::vector<bool> arrived_ ABSL_GUARDED_BY(mu_);
  int num_arrived_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
};

// Joins `group` as `rank` (each rank at most once). INVALID_ARGUMENT for a bad or taken rank.
absl::StatusOr<std::unique_ptr<Communicator>> CreateLoopbackCommunicator(
    std::shared_ptr<LoopbackGroup> group, int rank, const CommunicatorOptions& options = {});

}  // namespace switchyard
