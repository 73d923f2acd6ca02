// MoE dispatch + combine over Gloo between processes on 127.0.0.1: time and bandwidth of
// MoeDispatcher::Run with an identity expert function (communication and data movement, no expert
// compute), at decode size (128 tokens per rank) and prefill size (4096 tokens per rank), top-8 of
// 64 experts on a contiguous placement, for 2 and 4 processes. Printed beside the bound: a plain
// TCP stream of one large buffer between two of the same processes, and Gloo's own all-to-all-v
// carrying one large buffer between one pair, both measured in the same run.
//
// Row size: the dispatcher moves fp32 rows today. The main rows use row_bytes = 8192 (2048 fp32
// values), exactly the bytes of a bf16 row of hidden 4096; the dispatcher only sees bytes, so the
// traffic is the bf16 traffic. One extra decode case moves real fp32 rows of hidden 4096.
//
// Bytes: "logical" is one row per (token, choice) to other ranks, out and back (what a dispatcher
// without deduplication moves); "wire" is what this dispatcher sends (a token's row once per
// destination rank plus 12-byte entries out, one row per choice back). Each byte is counted once,
// by its sender. The "rank sums" cases return one partial sum per (token, rank) instead of one row
// per choice (DispatchOptions::sum_per_rank).
//
//   build/bin/bench-dispatch [--ranks 2,4] [--decode-iters 20] [--prefill-iters 3]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gloo/rendezvous/file_store.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/moe/dispatch.h"
#include "worker/moe/placement.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kNumExperts = 64;
constexpr int64_t kTopK = 8;
constexpr int64_t kStreamBytes = 256ll << 20;
constexpr int kStreamReps = 3;

struct BenchOptions {
  std::vector<int> ranks = {2, 4};
  int decode_iters = 20;
  int prefill_iters = 3;
};

struct SizeCase {
  const char* name;
  int64_t tokens_per_rank;
  int64_t hidden;  // fp32 values per row
  int iters;
  bool sum_per_rank = false;  // DispatchOptions::sum_per_rank
};

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---- The bound: a plain TCP stream between ranks 0 (sender) and 1 (receiver). ----

absl::Status WriteAll(int fd, const char* data, int64_t num_bytes) {
  while (num_bytes > 0) {
    const ssize_t n = ::send(fd, data, std::min<int64_t>(num_bytes, 1 << 22), 0);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    data += n;
    num_bytes -= n;
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, char* data, int64_t num_bytes) {
  while (num_bytes > 0) {
    const ssize_t n = ::recv(fd, data, std::min<int64_t>(num_bytes, 1 << 22), 0);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    data += n;
    num_bytes -= n;
  }
  return absl::OkStatus();
}

// Receiver: listens on an ephemeral port published in store_dir/raw_port, reads kStreamReps
// buffers, acknowledges each with one byte.
absl::Status StreamReceive(const std::string& store_dir) {
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::UnavailableError(absl::StrCat("listen: ", std::strerror(errno)));
  }
  std::ofstream(store_dir + "/raw_port.tmp") << ntohs(addr.sin_port);
  std::filesystem::rename(store_dir + "/raw_port.tmp", store_dir + "/raw_port");
  const int fd = ::accept(listener, nullptr, nullptr);
  ::close(listener);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("accept: ", std::strerror(errno)));
  std::vector<char> buffer(kStreamBytes);
  absl::Status status;
  for (int rep = 0; rep < kStreamReps && status.ok(); ++rep) {
    status = ReadAll(fd, buffer.data(), kStreamBytes);
    const char ack = 1;
    if (status.ok()) status = WriteAll(fd, &ack, 1);
  }
  ::close(fd);
  return status;
}

// Sender: best of kStreamReps sends of the whole buffer, each until the receiver's ack.
absl::StatusOr<double> StreamSend(const std::string& store_dir) {
  int port = 0;
  for (int tries = 0; port == 0 && tries < 2000; ++tries) {
    std::ifstream(store_dir + "/raw_port") >> port;
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (port == 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect to port ", port, ": ", std::strerror(errno)));
  }
  std::vector<char> buffer(kStreamBytes, 7);
  double best = 1e30;
  for (int rep = 0; rep < kStreamReps; ++rep) {
    const auto start = Clock::now();
    absl::Status status = WriteAll(fd, buffer.data(), kStreamBytes);
    char ack = 0;
    if (status.ok()) status = ReadAll(fd, &ack, 1);
    if (!status.ok()) return status;
    best = std::min(best, Seconds(start));
  }
  ::close(fd);
  return kStreamBytes / best / 1e9;
}

// Gloo's own transport on one pair: rank 0 sends kStreamBytes to rank 1 in one all-to-all-v.
absl::StatusOr<double> GlooPairRate(Communicator& comm) {
  const int world_size = comm.world_size(), me = comm.rank();
  std::vector<char> buffer(kStreamBytes, 3);
  AllToAllVBuffer send, recv;
  send.counts_bytes.assign(world_size, 0);
  recv.counts_bytes.assign(world_size, 0);
  if (me == 0) send.counts_bytes[1] = kStreamBytes;
  if (me == 1) recv.counts_bytes[0] = kStreamBytes;
  send.data = buffer.data();
  recv.data = buffer.data();
  PackOffsets(&send);
  PackOffsets(&recv);
  double best = 1e30;
  for (int rep = 0; rep < kStreamReps; ++rep) {
    if (absl::Status s = comm.Barrier(); !s.ok()) return s;
    const auto start = Clock::now();
    if (absl::Status s = comm.AllToAllV(send, recv); !s.ok()) return s;
    best = std::min(best, Seconds(start));
  }
  return kStreamBytes / best / 1e9;
}

// ---- Dispatch + combine. ----

struct RunFigures {
  double wall_s = 0;         // Run() wall time
  double comm_s = 0;         // dispatch_time + combine_time (excludes the identity experts)
  double a2a_wire_s = 0;     // plain all-to-all-vs of the bytes the dispatcher moved (out, back)
  double a2a_logical_s = 0;  // the same for one row per choice both ways (the old layout)
  double logical_bytes = 0;  // bytes one row per choice would send to other ranks, out + back
  double wire_bytes = 0;     // bytes this rank actually sent to other ranks, out + back
};

// Two plain all-to-all-vs (out with `out_bytes` per peer, back with `back_bytes`), timed between
// barriers: the transport alone, with no packing, grouping or combining.
absl::StatusOr<double> TimePlainExchange(Communicator& comm, const std::vector<int64_t>& out_send,
                                         const std::vector<int64_t>& out_recv,
                                         const std::vector<int64_t>& back_send,
                                         const std::vector<int64_t>& back_recv,
                                         std::vector<char>* send_buffer,
                                         std::vector<char>* recv_buffer) {
  AllToAllVBuffer out_s, out_r, back_s, back_r;
  out_s.counts_bytes = out_send;
  out_r.counts_bytes = out_recv;
  back_s.counts_bytes = back_send;
  back_r.counts_bytes = back_recv;
  const int64_t send_bytes = std::max(PackOffsets(&out_s), PackOffsets(&back_s));
  const int64_t recv_bytes = std::max(PackOffsets(&out_r), PackOffsets(&back_r));
  if (static_cast<int64_t>(send_buffer->size()) < send_bytes + 1)
    send_buffer->resize(send_bytes + 1);
  if (static_cast<int64_t>(recv_buffer->size()) < recv_bytes + 1)
    recv_buffer->resize(recv_bytes + 1);
  out_s.data = back_s.data = send_buffer->data();
  out_r.data = back_r.data = recv_buffer->data();
  if (absl::Status b = comm.Barrier(); !b.ok()) return b;
  const auto start = Clock::now();
  if (absl::Status a = comm.AllToAllV(out_s, out_r); !a.ok()) return a;
  if (absl::Status a = comm.AllToAllV(back_s, back_r); !a.ok()) return a;
  return Seconds(start);
}

absl::StatusOr<std::vector<RunFigures>> BenchSize(Communicator& comm, const SizeCase& size) {
  const int me = comm.rank();
  const int64_t num_tokens = size.tokens_per_rank, hidden = size.hidden;
  std::vector<float> x(num_tokens * hidden), out(num_tokens * hidden);
  std::vector<int32_t> ids(num_tokens * kTopK);
  std::vector<float> weights(num_tokens * kTopK, 1.0f / kTopK);
  std::mt19937 rng(17 + me);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 251) * 0.01f;
  std::vector<int32_t> experts(kNumExperts);
  for (int32_t e = 0; e < kNumExperts; ++e) experts[e] = e;
  for (int64_t t = 0; t < num_tokens; ++t) {  // k distinct experts per token
    std::shuffle(experts.begin(), experts.end(), rng);
    std::copy(experts.begin(), experts.begin() + kTopK, ids.begin() + t * kTopK);
  }
  auto placement = LayerPlacement::Contiguous(kNumExperts, comm.world_size());
  if (!placement.ok()) return placement.status();
  const GroupedExpertFn identity = [](const Tensor& rows, std::span<const int64_t>,
                                      const Tensor& out_rows) {
    if (rows.num_bytes() > 0) std::memcpy(out_rows.data(), rows.data(), rows.num_bytes());
    return absl::OkStatus();
  };
  std::unique_ptr<Backend> backend = MakeCpuBackend();
  MoeDispatcher dispatcher(&comm, backend.get(), DispatchOptions{.sum_per_rank = size.sum_per_rank});
  std::vector<RunFigures> figures;
  std::vector<char> a2a_send, a2a_recv;
  for (int iter = -1; iter < size.iters; ++iter) {  // iteration -1 warms the buffers up
    if (absl::Status s = comm.Barrier(); !s.ok()) return s;
    DispatchStats stats;
    const auto start = Clock::now();
    absl::Status s = dispatcher.Run(*placement, BorrowedHostRows(x.data(), num_tokens, hidden),
                                    ids, weights, kTopK, identity,
                                    BorrowedHostRows(out.data(), num_tokens, hidden), &stats);
    if (!s.ok()) return s;
    RunFigures f;
    f.wall_s = Seconds(start);
    f.comm_s = absl::ToDoubleSeconds(stats.dispatch_time + stats.combine_time);
    for (int peer = 0; peer < comm.world_size(); ++peer) {
      if (peer == me) continue;
      // Out: what this rank dispatches; back: the results of the rows it received.
      f.logical_bytes += stats.bytes_sent_per_peer[peer] + stats.bytes_received_per_peer[peer];
      f.wire_bytes +=
          stats.dispatch_bytes_sent_per_peer[peer] + stats.combine_bytes_sent_per_peer[peer];
    }
    auto wire =
        TimePlainExchange(comm, stats.dispatch_bytes_sent_per_peer,
                          stats.dispatch_bytes_received_per_peer, stats.combine_bytes_sent_per_peer,
                          stats.combine_bytes_received_per_peer, &a2a_send, &a2a_recv);
    if (!wire.ok()) return wire.status();
    f.a2a_wire_s = *wire;
    auto logical = TimePlainExchange(comm, stats.bytes_sent_per_peer, stats.bytes_received_per_peer,
                                     stats.bytes_received_per_peer, stats.bytes_sent_per_peer,
                                     &a2a_send, &a2a_recv);
    if (!logical.ok()) return logical.status();
    f.a2a_logical_s = *logical;
    if (iter >= 0) figures.push_back(f);
  }
  return figures;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Gathers each rank's per-iteration figures; rank 0 prints one line (slowest rank per iteration,
// median over iterations).
absl::Status ReportSize(Communicator& comm, const SizeCase& size,
                        const std::vector<RunFigures>& mine, double raw_gbps) {
  const int world_size = comm.world_size();
  constexpr int kValues = 6;
  const int64_t num_values = static_cast<int64_t>(mine.size()) * kValues;
  std::vector<double> send(num_values), all(num_values * world_size);
  for (size_t i = 0; i < mine.size(); ++i) {
    double* v = send.data() + kValues * i;
    v[0] = mine[i].wall_s;
    v[1] = mine[i].comm_s;
    v[2] = mine[i].a2a_wire_s;
    v[3] = mine[i].a2a_logical_s;
    v[4] = mine[i].logical_bytes;
    v[5] = mine[i].wire_bytes;
  }
  if (absl::Status s = comm.AllGather(send.data(), num_values * sizeof(double), all.data());
      !s.ok()) {
    return s;
  }
  if (comm.rank() != 0) return absl::OkStatus();
  // Per iteration: the slowest rank's times; bytes summed over the ranks (each counted once, by
  // its sender).
  std::vector<double> wall, comm_time, a2a_wire, a2a_logical, logical_mb, wire_mb, logical_gbps,
      wire_gbps;
  for (size_t i = 0; i < mine.size(); ++i) {
    double max_wall = 0, max_comm = 0, max_wire = 0, max_logical = 0, logical = 0, wire = 0;
    for (int r = 0; r < world_size; ++r) {
      const double* v = all.data() + r * num_values + kValues * i;
      max_wall = std::max(max_wall, v[0]);
      max_comm = std::max(max_comm, v[1]);
      max_wire = std::max(max_wire, v[2]);
      max_logical = std::max(max_logical, v[3]);
      logical += v[4];
      wire += v[5];
    }
    wall.push_back(max_wall);
    comm_time.push_back(max_comm);
    a2a_wire.push_back(max_wire);
    a2a_logical.push_back(max_logical);
    logical_mb.push_back(logical / 1e6);
    wire_mb.push_back(wire / 1e6);
    logical_gbps.push_back(logical / max_wall / 1e9);
    wire_gbps.push_back(wire / max_wall / 1e9);
  }
  const int64_t row_bytes = size.hidden * static_cast<int64_t>(sizeof(float));
  std::printf(
      "%5d  %-25s %6lld %6lld  %8.2f %8.2f %8.2f %8.2f  %8.1f %7.1f  %7.3f %7.3f  %5.2f %5.2f\n",
      world_size, size.name, static_cast<long long>(size.tokens_per_rank),
      static_cast<long long>(row_bytes), Median(wall) * 1e3, Median(comm_time) * 1e3,
      Median(a2a_wire) * 1e3, Median(a2a_logical) * 1e3, Median(logical_mb), Median(wire_mb),
      Median(logical_gbps), Median(wire_gbps), Median(logical_gbps) / raw_gbps,
      Median(wire_gbps) / raw_gbps);
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status RankMain(int rank, int world_size, const std::string& store_dir,
                      const BenchOptions& options) {
  GlooCommunicatorOptions gloo_options;
  gloo_options.comm.timeout = absl::Seconds(120);
  gloo_options.comm.connect_timeout = absl::Seconds(60);
  auto comm = CreateGlooCommunicator(std::make_shared<gloo::rendezvous::FileStore>(store_dir), rank,
                                     world_size, gloo_options);
  if (!comm.ok()) return comm.status();
  double raw_gbps = 0;
  if (rank == 1) {
    if (absl::Status s = StreamReceive(store_dir); !s.ok()) return s;
  } else if (rank == 0) {
    auto rate = StreamSend(store_dir);
    if (!rate.ok()) return rate.status();
    raw_gbps = *rate;
  }
  auto gloo_rate = GlooPairRate(**comm);
  if (!gloo_rate.ok()) return gloo_rate.status();
  if (rank == 0) {
    std::printf(
        "%d processes: raw loopback TCP stream rank 0 -> 1 (256 MiB, best of %d): %.3f GB/s;"
        " Gloo one-pair all-to-all-v: %.3f GB/s\n",
        world_size, kStreamReps, raw_gbps, *gloo_rate);
    std::printf(
        "ranks  case                      tok/rk  row_B   wall ms  comm ms a2a wire  a2a log"
        "  logic MB wire MB  log GB/s wireGB/s  log/raw wire/raw\n");
    std::fflush(stdout);
  }
  const std::vector<SizeCase> sizes = {
      {"decode, bf16-sized rows", 128, 2048, options.decode_iters},
      {"prefill, bf16-sized rows", 4096, 2048, options.prefill_iters},
      {"decode, fp32 rows h4096", 128, 4096, options.decode_iters},
      {"decode, bf16, rank sums", 128, 2048, options.decode_iters, true},
      {"prefill, bf16, rank sums", 4096, 2048, options.prefill_iters, true},
  };
  for (const SizeCase& size : sizes) {
    auto figures = BenchSize(**comm, size);
    if (!figures.ok()) return figures.status();
    if (absl::Status s = ReportSize(**comm, size, *figures, raw_gbps); !s.ok()) return s;
  }
  return (*comm)->Barrier();
}

// Forks the ranks (this process has no threads yet) and waits for them.
int RunWorld(int world_size, const BenchOptions& options) {
  char dir_template[] = "/tmp/switchyard_dispatch_bench_XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world_size; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) {
      absl::Status status = RankMain(rank, world_size, dir, options);
      if (!status.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
      std::fflush(stdout);
      std::_Exit(status.ok() ? 0 : 1);
    }
    pids.push_back(pid);
  }
  int failures = 0;
  for (pid_t pid : pids) {
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    failures += (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) ? 0 : 1;
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return failures;
}

bool ParseArgs(int argc, char** argv, BenchOptions* options) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--ranks") {
      options->ranks.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int ranks = 0;
        if (!absl::SimpleAtoi(part, &ranks) || ranks < 2) return false;
        options->ranks.push_back(ranks);
      }
    } else if (flag == "--decode-iters") {
      if (!absl::SimpleAtoi(value, &options->decode_iters)) return false;
    } else if (flag == "--prefill-iters") {
      if (!absl::SimpleAtoi(value, &options->prefill_iters)) return false;
    } else {
      return false;
    }
  }
  return argc % 2 == 1;
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  switchyard::BenchOptions options;
  if (!switchyard::ParseArgs(argc, argv, &options)) {
    std::fprintf(stderr, "usage: %s [--ranks 2,4] [--decode-iters 20] [--prefill-iters 3]\n",
                 argv[0]);
    return 2;
  }
  std::printf(
      "MoE dispatch + combine over Gloo on 127.0.0.1: top-%lld of %d experts, contiguous "
      "placement, identity experts.\nbf16-sized rows: 8192 B = bf16 hidden 4096 (moved as "
      "2048 fp32 values; the dispatcher moves bytes).\nwall ms: Run() on the slowest rank, "
      "median; comm ms: its dispatch + combine phases (no experts); a2a wire / a2a log ms: two "
      "plain all-to-all-vs (out, back) of the bytes the dispatcher moved / of one row per choice "
      "both ways (transport alone).\nlogic MB: bytes crossing ranks with one row per choice "
      "out and back; wire MB: bytes actually sent (token rows once per rank + entries out, one "
      "row per choice back, or one per (token, rank) in the rank-sums cases); each byte counted "
      "once, by its sender, summed over ranks.\nGB/s: "
      "those bytes / wall time; /raw: over the raw TCP stream.\n",
      static_cast<long long>(switchyard::kTopK), switchyard::kNumExperts);
  std::fflush(stdout);
  int failures = 0;
  for (int world_size : options.ranks) failures += switchyard::RunWorld(world_size, options);
  return failures == 0 ? 0 : 1;
}
