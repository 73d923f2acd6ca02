// A small HTTP/1.1 server for the operational endpoints (/metrics, /health): one named thread that
// accepts a connection, reads one GET request, answers it and closes the connection. Scrapes and
// probes are rare and tiny, so one thread is plenty, and owning it (a std::thread with a normal
// stack) avoids the small fixed thread stacks of embedded servers, which cannot hold the thread-
// local storage of large libraries such as cuBLAS.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace switchyard {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain";
  std::string body;
};

// Maps a request path ("/metrics") to a response; called on the server thread.
using HttpHandler = std::function<HttpResponse(const std::string& path)>;

// Thread-safe to destroy from any thread; Stop() (or the destructor) joins the server thread.
class HttpServer {
 public:
  // Binds host:port (port 0 = a free port) and starts serving. UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host, int port,
                                                           HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int bound_port() const { return bound_port_; }
  void Stop();

 private:
  HttpServer(int listen_fd, int wake_fd_read, int wake_fd_write, int port, HttpHandler handler);
  void Serve();
  void HandleConnection(int fd);

  const int listen_fd_;
  const int wake_read_fd_, wake_write_fd_;
  const int bound_port_;
  HttpHandler handler_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace switchyard
