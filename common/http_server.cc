#include "common/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace switchyard {
namespace {

constexpr int kReadTimeoutMs = 2000;
constexpr size_t kMaxRequestBytes = 16 * 1024;

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 400: return "Bad Request";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return;  // the client went away: nothing to do
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads until the end of the request head ("\r\n\r\n"), a size limit or a timeout.
std::string ReadRequestHead(int fd) {
  std::string head;
  char buffer[2048];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < kMaxRequestBytes) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, kReadTimeoutMs) <= 0) break;
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    head.append(buffer, static_cast<size_t>(n));
  }
  return head;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& host, int port,
                                                              HttpHandler handler) {
  const std::string where = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string port_text = absl::StrCat(port);
  if (int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints,
                             &addresses);
      rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("HTTP server address ", where, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string last_error = "no address";
  for (addrinfo* a = addresses; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      last_error = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(addresses);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", where, ": ", last_error));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  const int bound_port = bound.ss_family == AF_INET6
                             ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                             : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("HTTP server: pipe: ", std::strerror(errno)));
  }
  return std::unique_ptr<HttpServer>(
      new HttpServer(fd, wake[0], wake[1], bound_port, std::move(handler)));
}

HttpServer::HttpServer(int listen_fd, int wake_fd_read, int wake_fd_write, int port,
                       HttpHandler handler)
    : listen_fd_(listen_fd),
      wake_read_fd_(wake_fd_read),
      wake_write_fd_(wake_fd_write),
      bound_port_(port),
      handler_(std::move(handler)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "http-server");
    Serve();
  });
}

HttpServer::~HttpServer() {
  Stop();
  ::close(listen_fd_);
  ::close(wake_read_fd_);
  ::close(wake_write_fd_);
}

void HttpServer::Stop() {
  if (stopping_.exchange(true)) return;
  const char byte = 1;
  (void)!::write(wake_write_fd_, &byte, 1);
  if (thread_.joinable()) thread_.join();
}

void HttpServer::Serve() {
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_read_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    HandleConnection(fd);
    ::close(fd);
  }
}

void HttpServer::HandleConnection(int fd) {
  const std::string head = ReadRequestHead(fd);
  const size_t line_end = head.find("\r\n");
  const std::string_view line(head.data(), line_end == std::string::npos ? head.size() : line_end);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  HttpResponse response;
  bool head_only = false;
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) {
    response = {400, "text/plain", "bad request\n"};
  } else {
    const std::string_view method = line.substr(0, sp1);
    std::string path(line.substr(sp1 + 1, sp2 - sp1 - 1));
    path = path.substr(0, path.find('?'));
    head_only = method == "HEAD";
    if (method != "GET" && !head_only) {
      response = {405, "text/plain", "only GET\n"};
    } else {
      response = handler_(path);
    }
  }
  std::string reply = absl::StrCat("HTTP/1.1 ", response.status, " ",
                                   std::string(ReasonPhrase(response.status)),
                                   "\r\nContent-Type: ", response.content_type,
                                   "\r\nContent-Length: ", response.body.size(),
                                   "\r\nConnection: close\r\n\r\n");
  if (!head_only) reply += response.body;
  WriteAll(fd, reply);
}

}  // namespace switchyard
