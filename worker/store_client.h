// The data plane's rendezvous store on the worker side: gloo::rendezvous::Store over the
// coordinator's ClusterService.StoreSet / StoreGet (control.proto).
//
// The Gloo communicator (worker/comm/gloo_communicator.h) wraps this store in a PrefixStore with
// LoadRequest.rendezvous_prefix, so the coordinator sees keys "<rendezvous_prefix>/<gloo key>".
// Gloo's Store interface reports failures by throwing: every failure here throws gloo::IoException
// with a message naming the operation, the keys and the coordinator; a timeout's message says
// "timed out", which CreateGlooCommunicator turns into DEADLINE_EXCEEDED (other failures into
// UNAVAILABLE). Nothing is thrown past CreateGlooCommunicator.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "grpcpp/channel.h"
#include "switchyard/v1/control.grpc.pb.h"

namespace switchyard {

struct ClusterStoreOptions {
  // How long get() waits for a key when Gloo gives no timeout, and the bound on set().
  absl::Duration default_timeout = absl::Seconds(120);
  // Added to a wait's own timeout for the RPC deadline (the server answers at the timeout).
  absl::Duration rpc_margin = absl::Seconds(5);
  // Retries while the coordinator is UNAVAILABLE, until the operation's deadline.
  absl::Duration retry_backoff = absl::Milliseconds(200);
  // A long wait is asked for in slices of this length, so that `cancelled` is seen promptly.
  absl::Duration wait_slice = absl::Seconds(1);
  // When set and true, every operation (and a wait in progress, within wait_slice) throws: a
  // worker told to stop must not sit out a rendezvous timeout.
  std::shared_ptr<std::atomic<bool>> cancelled;
};

// Thread-safe (gRPC stubs are). Owns nothing but the channel reference.
class ClusterStore final : public gloo::rendezvous::Store {
 public:
  ClusterStore(std::shared_ptr<grpc::Channel> channel, std::string coordinator_address,
               ClusterStoreOptions options = {});

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  // StoreGet of `keys` waiting up to `timeout`; throws gloo::IoException on failure.
  std::vector<std::string> Get(const std::vector<std::string>& keys, absl::Duration timeout);
  // One StoreGet waiting up to `slice` (retried while the coordinator is UNAVAILABLE).
  grpc::Status GetSlice(const std::vector<std::string>& keys, absl::Duration slice,
                        v1::StoreGetResponse* response);
  bool cancelled() const { return options_.cancelled != nullptr && options_.cancelled->load(); }

  std::unique_ptr<v1::ClusterService::Stub> stub_;
  const std::string coordinator_address_;
  const ClusterStoreOptions options_;
};

}  // namespace switchyard
