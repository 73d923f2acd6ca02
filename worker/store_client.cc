#include "worker/store_client.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "gloo/common/error.h"
#include "grpcpp/client_context.h"

namespace switchyard {
namespace {

std::chrono::system_clock::time_point ToChrono(absl::Time t) { return absl::ToChronoTime(t); }

// Runs `call` (one RPC with `deadline`) until it succeeds, fails other than UNAVAILABLE, or the
// operation's `deadline` passes; CANCELLED as soon as `cancelled()` (checked before every try, so
// a stopping worker does not wait out the deadline while the coordinator is unreachable).
template <typename Cancelled, typename Call>
grpc::Status WithRetry(absl::Time deadline, absl::Duration backoff, Cancelled cancelled,
                       Call call) {
  for (;;) {
    if (cancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled (worker stopping)");
    grpc::ClientContext context;
    context.set_deadline(ToChrono(deadline));
    grpc::Status status = call(&context);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() + backoff >= deadline) {
      return status;
    }
    SY_LOG_DEBUG("rendezvous store: coordinator unavailable ({}), retrying",
                 status.error_message());
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
  }
}

}  // namespace

ClusterStore::ClusterStore(std::shared_ptr<grpc::Channel> channel, std::string coordinator_address,
                           ClusterStoreOptions options)
    : stub_(v1::ClusterService::NewStub(std::move(channel))),
      coordinator_address_(std::move(coordinator_address)),
      options_(options) {}

void ClusterStore::set(const std::string& key, const std::vector<char>& data) {
  if (cancelled()) {
    throw gloo::IoException(absl::StrCat("rendezvous store set '", key, "' at coordinator ",
                                         coordinator_address_, ": cancelled (worker stopping)"));
  }
  v1::StoreSetRequest request;
  request.set_key(key);
  request.set_value(std::string(data.begin(), data.end()));
  v1::StoreSetResponse response;
  const grpc::Status status = WithRetry(
      absl::Now() + options_.default_timeout, options_.retry_backoff, [this] { return cancelled(); },
      [&](grpc::ClientContext* context) { return stub_->StoreSet(context, request, &response); });
  if (!status.ok()) {
    const bool timed_out = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    throw gloo::IoException(absl::StrCat("rendezvous store set '", key, "' at coordinator ",
                                         coordinator_address_, timed_out ? " timed out: " : ": ",
                                         status.error_message()));
  }
}

std::vector<char> ClusterStore::get(const std::string& key) {
  const std::vector<std::string> values = Get({key}, options_.default_timeout);
  return std::vector<char>(values[0].begin(), values[0].end());
}

void ClusterStore::wait(const std::vector<std::string>& keys) {
  Get(keys, options_.default_timeout);
}

void ClusterStore::wait(const std::vector<std::string>& keys,
                        const std::chrono::milliseconds& timeout) {
  Get(keys, absl::FromChrono(timeout));
}

grpc::Status ClusterStore::GetSlice(const std::vector<std::string>& keys, absl::Duration slice,
                                    v1::StoreGetResponse* response) {
  const absl::Time slice_end = absl::Now() + slice;
  return WithRetry(slice_end + options_.rpc_margin, options_.retry_backoff,
                   [this] { return cancelled(); }, [&](grpc::ClientContext* context) {
                     v1::StoreGetRequest request;
                     for (const std::string& key : keys) request.add_keys(key);
                     const int64_t left_ms = absl::ToInt64Milliseconds(slice_end - absl::Now());
                     request.set_timeout_ms(static_cast<uint32_t>(std::max<int64_t>(1, left_ms)));
                     response->Clear();
                     return stub_->StoreGet(context, request, response);
                   });
}

std::vector<std::string> ClusterStore::Get(const std::vector<std::string>& keys,
                                           absl::Duration timeout) {
  const std::string what = absl::StrCat("rendezvous store get [", absl::StrJoin(keys, ", "),
                                        "] at coordinator ", coordinator_address_);
  const absl::Time deadline = absl::Now() + timeout;
  v1::StoreGetResponse response;
  grpc::Status status;
  for (;;) {
    if (cancelled()) throw gloo::IoException(absl::StrCat(what, ": cancelled (worker stopping)"));
    status = GetSlice(keys, std::min(deadline - absl::Now(), options_.wait_slice), &response);
    // The coordinator answers DEADLINE_EXCEEDED while a key is missing: ask again until our
    // deadline (also while it is unreachable, which GetSlice retries only within the slice).
    const bool again = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                       status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (!again || absl::Now() >= deadline) break;
  }
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    throw gloo::IoException(absl::StrCat(what, " timed out after ", absl::FormatDuration(timeout),
                                         ": ", status.error_message()));
  }
  if (!status.ok()) throw gloo::IoException(absl::StrCat(what, ": ", status.error_message()));
  if (response.values_size() != static_cast<int>(keys.size())) {
    throw gloo::IoException(
        absl::StrCat(what, ": expected ", keys.size(), " values, got ", response.values_size()));
  }
  return std::vector<std::string>(response.values().begin(), response.values().end());
}

}  // namespace switchyard
