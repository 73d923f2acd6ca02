// Turns a worker's step results into the worker series of docs/metrics.md: step time, token rows
// routed to this rank, all-to-all time (one observation per MoE layer and phase) and bytes, and,
// with --metrics_per_expert, rows per logical expert.
#pragma once

#include <cstdint>
#include <vector>

#include "common/metrics.h"
#include "switchyard/v1/control.pb.h"
#include "worker/worker_runtime.h"

namespace switchyard {

// Records into one WorkerMetrics (which must outlive it). Not thread-safe: the engine thread calls
// it after each step, reading the runtime's executor stats of that step.
class StepMetricsRecorder {
 public:
  explicit StepMetricsRecorder(metrics::WorkerMetrics* metrics) : metrics_(metrics) {}

  // A step that completed (status OK) on `runtime`, `step_seconds` from plan received to result.
  void RecordStep(const WorkerRuntime& runtime, const v1::StepResponse& response,
                  double step_seconds);

 private:
  void RecordExpertRows(const WorkerRuntime& runtime);

  metrics::WorkerMetrics* metrics_;
  std::vector<int64_t> layer_of_;  // MoE layer ordinal -> layer index (MoeLayerIndices)
};

}  // namespace switchyard
