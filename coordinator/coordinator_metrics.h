// The coordinator's metrics (docs/metrics.md) fed from the step loop's observations.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/time/time.h"
#include "common/metrics.h"
#include "coordinator/request_manager.h"

namespace switchyard {

// A ServingObserver that updates metrics::CoordinatorMetrics. The scheduler's cumulative counts
// (prefix cache, preemptions) become counter increments by their change since the last step.
// Thread-safe for the calls ServingObserver allows (counter/gauge updates are atomic; the
// cumulative marks are touched by the loop thread only).
class MetricsObserver final : public ServingObserver {
 public:
  explicit MetricsObserver(metrics::CoordinatorMetrics* metrics) : m_(metrics) {}

  void OnRejected(absl::StatusCode code) override;
  void OnAdmitted(int64_t num_prompt_tokens) override;
  void OnScheduled(absl::Duration queue_time) override;
  void OnFirstToken(absl::Duration ttft, absl::Duration prefill_time) override;
  void OnTokens(int64_t num_tokens, std::optional<absl::Duration> itl) override;
  void OnFinished(const char* finished_reason, absl::Duration e2e,
                  absl::Duration decode_time) override;
  void OnFailed(absl::StatusCode code) override;
  void OnStep(const SchedulerStats& stats, int64_t num_tokens,
              std::optional<double> balancedness) override;

 private:
  metrics::CoordinatorMetrics* const m_;
  int64_t last_queries_ = 0;
  int64_t last_hits_ = 0;
  int64_t last_preemptions_ = 0;
};

}  // namespace switchyard
