#include "coordinator/coordinator_metrics.h"

namespace switchyard {

void MetricsObserver::OnRejected(absl::StatusCode code) { m_->RequestErrors(code).Increment(); }

void MetricsObserver::OnAdmitted(int64_t num_prompt_tokens) {
  m_->prompt_tokens.Increment(static_cast<double>(num_prompt_tokens));
}

void MetricsObserver::OnScheduled(absl::Duration queue_time) {
  m_->request_queue_time_seconds.Observe(absl::ToDoubleSeconds(queue_time));
}

void MetricsObserver::OnFirstToken(absl::Duration ttft, absl::Duration prefill_time) {
  m_->time_to_first_token_seconds.Observe(absl::ToDoubleSeconds(ttft));
  m_->request_prefill_time_seconds.Observe(absl::ToDoubleSeconds(prefill_time));
}

void MetricsObserver::OnTokens(int64_t num_tokens, std::optional<absl::Duration> itl) {
  m_->generation_tokens.Increment(static_cast<double>(num_tokens));
  if (itl.has_value()) m_->inter_token_latency_seconds.Observe(absl::ToDoubleSeconds(*itl));
}

void MetricsObserver::OnFinished(const char* finished_reason, absl::Duration e2e,
                                 absl::Duration decode_time) {
  m_->RequestSuccess(finished_reason).Increment();
  m_->e2e_request_latency_seconds.Observe(absl::ToDoubleSeconds(e2e));
  m_->request_decode_time_seconds.Observe(absl::ToDoubleSeconds(decode_time));
}

void MetricsObserver::OnFailed(absl::StatusCode code) { m_->RequestErrors(code).Increment(); }

void MetricsObserver::OnStep(const SchedulerStats& stats, int64_t num_tokens,
                             std::optional<double> balancedness) {
  m_->num_requests_running.Set(static_cast<double>(stats.num_running));
  m_->num_requests_waiting.Set(static_cast<double>(stats.num_waiting));
  m_->kv_cache_usage_perc.Set(stats.kv_usage);
  if (num_tokens > 0) m_->iteration_tokens.Observe(static_cast<double>(num_tokens));
  if (balancedness.has_value()) m_->moe_balancedness.Observe(*balancedness);
  m_->prefix_cache_queries.Increment(
      static_cast<double>(stats.prefix_cache_query_tokens - last_queries_));
  m_->prefix_cache_hits.Increment(static_cast<double>(stats.prefix_cache_hit_tokens - last_hits_));
  m_->num_preemptions.Increment(static_cast<double>(stats.num_preemptions - last_preemptions_));
  last_queries_ = stats.prefix_cache_query_tokens;
  last_hits_ = stats.prefix_cache_hit_tokens;
  last_preemptions_ = stats.num_preemptions;
}

}  // namespace switchyard
