// NCCL communicator (label gpu): single-rank checks on one GPU and, with several GPUs, one rank per
// GPU as threads sharing an in-process HashStore. Skips cleanly when no GPU is usable (any error
// from cudaGetDeviceCount counts as none: without a driver it is cudaErrorInsufficientDriver).
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gloo/rendezvous/hash_store.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

int NumGpus() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

NcclCommunicatorOptions Options(int device) {
  NcclCommunicatorOptions options;
  options.device = device;
  options.comm.timeout = absl::Seconds(20);
  options.comm.connect_timeout = absl::Seconds(60);
  return options;
}

// Provenance all-to-all-v through device memory: rank r sends (r + 1) * (p + 1) int32 values
// {r * 1000 + p * 10 + i % 10} to rank p.
absl::Status DeviceProvenance(Communicator& comm) {
  const int world_size = comm.world_size(), me = comm.rank();
  AllToAllVBuffer send, recv;
  std::vector<int32_t> host_send;
  for (int peer = 0; peer < world_size; ++peer) {
    send.counts_bytes.push_back((me + 1) * (peer + 1) * sizeof(int32_t));
    recv.counts_bytes.push_back((peer + 1) * (me + 1) * sizeof(int32_t));
    for (int i = 0; i < (me + 1) * (peer + 1); ++i)
      host_send.push_back(me * 1000 + peer * 10 + i % 10);
  }
  const int64_t send_bytes = PackOffsets(&send);
  const int64_t recv_bytes = PackOffsets(&recv);
  void* device_send = nullptr;
  void* device_recv = nullptr;
  if (cudaMalloc(&device_send, send_bytes) != cudaSuccess ||
      cudaMalloc(&device_recv, recv_bytes) != cudaSuccess ||
      cudaMemcpy(device_send, host_send.data(), send_bytes, cudaMemcpyHostToDevice) !=
          cudaSuccess) {
    return absl::InternalError("cuda allocation or copy failed");
  }
  send.data = device_send;
  recv.data = device_recv;
  absl::Status status = comm.AllToAllV(send, recv);
  std::vector<int32_t> host_recv(recv_bytes / sizeof(int32_t));
  cudaMemcpy(host_recv.data(), device_recv, recv_bytes, cudaMemcpyDeviceToHost);
  cudaFree(device_send);
  cudaFree(device_recv);
  if (!status.ok()) return status;
  for (int src = 0; src < world_size; ++src) {
    const int32_t* row = host_recv.data() + recv.offsets_bytes[src] / sizeof(int32_t);
    for (int i = 0; i < (src + 1) * (me + 1); ++i) {
      if (row[i] != src * 1000 + me * 10 + i % 10) {
        return absl::InternalError(
            absl::StrCat("rank ", me, ": element ", i, " from rank ", src, " is ", row[i]));
      }
    }
  }
  std::vector<int64_t> counts_out(world_size), counts_in;
  for (int peer = 0; peer < world_size; ++peer) counts_out[peer] = me * 100 + peer;
  status = comm.ExchangeCounts(counts_out, &counts_in);
  if (!status.ok()) return status;
  for (int peer = 0; peer < world_size; ++peer) {
    if (counts_in[peer] != peer * 100 + me) return absl::InternalError("wrong exchanged count");
  }
  return comm.Barrier();
}

std::vector<absl::Status> RunNcclRanks(int world_size) {
  auto store = std::make_shared<gloo::rendezvous::HashStore>();
  std::vector<absl::Status> statuses(world_size);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = CreateNcclCommunicator(store, rank, world_size, Options(rank));
      statuses[rank] = comm.ok() ? DeviceProvenance(**comm) : comm.status();
    });
  }
  for (auto& thread : threads) thread.join();
  return statuses;
}

TEST(NcclCommunicatorTest, SingleRank) {
  if (NumGpus() < 1) GTEST_SKIP() << "no usable CUDA device";
  const auto statuses = RunNcclRanks(1);
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
}

TEST(NcclCommunicatorTest, OneRankPerGpu) {
  const int num_gpus = NumGpus();
  if (num_gpus < 2) GTEST_SKIP() << "needs at least 2 GPUs, found " << num_gpus;
  for (const auto& status : RunNcclRanks(num_gpus)) EXPECT_TRUE(status.ok()) << status;
}

TEST(NcclCommunicatorTest, AbortFailsLaterCalls) {
  if (NumGpus() < 1) GTEST_SKIP() << "no usable CUDA device";
  auto store = std::make_shared<gloo::rendezvous::HashStore>();
  auto comm = CreateNcclCommunicator(store, 0, 1, Options(0));
  ASSERT_TRUE(comm.ok()) << comm.status();
  ASSERT_TRUE((*comm)->Barrier().ok());
  (*comm)->Abort("test");
  EXPECT_EQ((*comm)->Barrier().code(), absl::StatusCode::kAborted);
}

TEST(NcclCommunicatorTest, RejectsBadArgumentsWithoutAGpu) {
  auto store = std::make_shared<gloo::rendezvous::HashStore>();
  EXPECT_EQ(CreateNcclCommunicator(store, 2, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateNcclCommunicator(nullptr, 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace switchyard
