#include "worker/step_metrics.h"

#include "absl/time/time.h"
#include "worker/ep_moe_executor.h"

namespace switchyard {

void StepMetricsRecorder::RecordStep(const WorkerRuntime& runtime, const v1::StepResponse& response,
                                     double step_seconds) {
  metrics_->step_seconds.Observe(step_seconds);
  const v1::StepStats& stats = response.stats();
  metrics_->moe_rank_tokens.Increment(static_cast<double>(stats.rows_routed()));
  metrics_->all_to_all_dispatch_bytes.Increment(static_cast<double>(stats.dispatch_bytes()));
  metrics_->all_to_all_combine_bytes.Increment(static_cast<double>(stats.combine_bytes()));
  const ExpertParallelMoeExecutor* ep = runtime.ep();
  if (ep == nullptr) return;
  for (const DispatchStats& layer : ep->last_layer_stats()) {
    metrics_->all_to_all_dispatch_seconds.Observe(absl::ToDoubleSeconds(layer.dispatch_time));
    metrics_->all_to_all_combine_seconds.Observe(absl::ToDoubleSeconds(layer.combine_time));
  }
  if (metrics_->per_expert_metrics()) RecordExpertRows(runtime);
}

void StepMetricsRecorder::RecordExpertRows(const WorkerRuntime& runtime) {
  const ExpertParallelMoeExecutor& ep = *runtime.ep();
  const std::vector<DispatchStats>& layers = ep.last_layer_stats();
  // Each MoE layer ran exactly once in the step: its stats hold the step's rows per local slot.
  if (layer_of_.size() != layers.size()) layer_of_ = MoeLayerIndices(runtime.engine()->config());
  for (size_t moe_idx = 0; moe_idx < layers.size(); ++moe_idx) {
    const std::vector<int64_t>& rows = layers[moe_idx].rows_per_local_slot;
    const LayerPlacement& placement = ep.placements()[moe_idx];
    for (size_t slot = 0; slot < rows.size(); ++slot) {
      if (rows[slot] <= 0) continue;
      const int32_t expert = placement.expert_at(ep.rank(), static_cast<int32_t>(slot));
      prometheus::Counter* counter =
          metrics_->ExpertTokens(static_cast<int>(layer_of_[moe_idx]), expert);
      if (counter != nullptr) counter->Increment(static_cast<double>(rows[slot]));
    }
  }
}

}  // namespace switchyard
