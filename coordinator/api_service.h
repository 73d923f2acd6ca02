// The client API (inference.proto) on gRPC's callback API.
//
// Generate validates and tokenizes the request on the callback thread (CPU work, no waiting),
// hands it to the RequestManager and returns a ServerWriteReactor that the step loop feeds through
// a GenerateStream (a ResponseSink): one write in flight at a time, deltas that arrive while a
// write is in flight are merged, so a slow client never blocks the loop. Abort, GetModelInfo and
// GetServerInfo answer at once from snapshots.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "common/model_config.h"
#include "coordinator/cluster_service.h"
#include "coordinator/request_manager.h"
#include "coordinator/request_prep.h"
#include "switchyard/v1/inference.grpc.pb.h"

namespace switchyard {

struct ApiOptions {
  std::string model_name;
  std::string version;  // reported by GetServerInfo
  ModelConfig model_config;
  ModelContext model;  // tokenizer, vocabulary, context length, EOS ids
  int32_t num_workers = 1;
};

// Thread-safe. `manager`, `cluster` and `observer` (may be null) must outlive the service and
// the server it is registered with.
class InferenceApi final : public v1::InferenceService::CallbackService {
 public:
  InferenceApi(ApiOptions options, RequestManager* manager, const ClusterService* cluster,
               ServingObserver* observer);

  void set_state(v1::ServingState state) { state_.store(state); }
  v1::ServingState state() const { return state_.load(); }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

  // Fills `info` (also used by tests and the CLI's status view).
  void FillServerInfo(v1::ServerInfo* info) const;

 private:
  absl::Status NotServingStatus() const;

  const ApiOptions options_;
  RequestManager* const manager_;
  const ClusterService* const cluster_;
  ServingObserver* const observer_;
  std::atomic<v1::ServingState> state_{v1::SERVING_STATE_STARTING};
};

}  // namespace switchyard
