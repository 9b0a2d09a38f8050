#include "comm/liveness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "comm/job_failure.h"
#include "common/host_port.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "common/steady_time.h"

namespace switchyard {
namespace {

constexpr uint32_t kMagic = 0x53594c56;  // "SYLV"
enum FrameType : uint16_t { kHello = 1, kBeat = 2, kGoodbye = 3, kExit = 4, kAbort = 5 };

// One message on the channel; every frame has this fixed size. Both ends run the same build.
struct Frame {
  uint32_t magic = kMagic;
  uint16_t type = 0;
  uint16_t version = 1;
  int32_t rank = 0;
  int32_t pid = 0;
  uint64_t done = 0;
  int64_t last_ns = 0;
  uint64_t load_done = 0;
  uint64_t load_total = 0;
  int32_t waiting_on = -1;  // world rank whose data this rank waits for; -1: none
  int32_t reserved = 0;
  char token[40] = {};
  char host[64] = {};
  char text[392] = {};
};
static_assert(sizeof(Frame) % 8 == 0 && sizeof(Frame) <= 1024);

template <size_t N>
void CopyText(char (&dst)[N], const std::string& src) {
  std::snprintf(dst, N, "%s", src.c_str());
}
template <size_t N>
std::string ReadText(const char (&src)[N]) {
  return std::string(src, strnlen(src, N));
}

// The first IPv4 address of an interface that is up and not loopback (for a job that spans
// hosts: a host name may resolve to 127.0.1.1 on Debian and Ubuntu); empty if none.
std::string ClusterAddress() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* a = list; a != nullptr && found.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    if (!(a->ifa_flags & IFF_UP) || (a->ifa_flags & IFF_LOOPBACK)) continue;
    char text[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof(text));
    found = text;
  }
  freeifaddrs(list);
  return found;
}

std::string RandomToken() {
  unsigned char bytes[16] = {};
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  urandom.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
  std::string hex;
  for (unsigned char b : bytes) absl::StrAppend(&hex, absl::Hex(b, absl::kZeroPad2));
  return hex;
}

std::string Errno(absl::string_view what) {
  return absl::StrCat(what, ": ", std::strerror(errno));
}

bool SendFrame(int fd, const Frame& f, bool wait) {
  const char* p = reinterpret_cast<const char*>(&f);
  size_t left = sizeof(f);
  while (left > 0) {
    const ssize_t n = send(fd, p, left, MSG_NOSIGNAL | (wait ? 0 : MSG_DONTWAIT));
    if (n < 0 && errno == EINTR) continue;
    // A peer that does not read (stopped) fills its buffer: drop this beat, not the process.
    if (n <= 0) return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && left == sizeof(f);
    p += n;
    left -= static_cast<size_t>(n);
  }
  return true;
}

// A frame of `type` from this process, rank `rank` on `host`.
Frame NewFrame(uint16_t type, int rank, const std::string& host) {
  Frame f;
  f.type = type;
  f.rank = rank;
  f.pid = getpid();
  CopyText(f.host, host);
  return f;
}

// "rank 2 (pid 4711 on node07) is gone: ...", the message of a connection closed without a
// goodbye.
absl::Status GoneError(const std::string& who) {
  return absl::UnavailableError(absl::StrCat(
      who, " is gone: its control connection closed without a goodbye (the process was killed "
           "or exited)"));
}

void SetNoDelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

// ---- Liveness ----

struct Liveness::Peer {
  int fd = -1;
  int rank = -1;
  int pid = 0;
  std::string host;
  std::string inbuf;
  absl::Time last_seen;
  bool heard = false;    // a frame has arrived (until then silence is measured by connect_timeout)
  bool gone = false;     // the connection is closed
  bool goodbye = false;  // it ended in order (or its end was already reported)
  uint64_t done = 0;
  int64_t last_ns = 0;
  int waiting_on = -1;
  uint64_t seen_done = 0;  // progress check: operations already noted
  uint64_t load_done = 0, load_total = 0;
};

Liveness::Liveness(int rank, int world_size, const ProgressMeter* progress,
                   const LivenessOptions& options)
    : rank_(rank),
      world_size_(world_size),
      progress_(progress),
      options_(options),
      host_name_(HostName()) {}

Liveness::~Liveness() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  AbortWorkers();  // rank 0 after a failure, if nobody told the workers yet
  for (Peer& p : peers_) {
    if (p.fd >= 0) close(p.fd);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
}

std::string Liveness::DescribeLocked(const Peer& p) {
  if (p.pid == 0) return absl::StrCat("rank ", p.rank);
  return absl::StrCat("rank ", p.rank, " (pid ", p.pid, " on ", p.host, ")");
}

std::string Liveness::Describe(int rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Peer& p : peers_) {
    if (p.rank == rank) return DescribeLocked(p);
  }
  return absl::StrCat("rank ", rank);
}

int Liveness::WaitingNow() const {
  return options_.waiting_on ? options_.waiting_on() : WaitingOn();
}

void Liveness::SendExit(const std::string& why) {
  Peer& zero = peers_[0];
  if (zero.fd < 0 || zero.gone) return;
  Frame f = NewFrame(kExit, rank_, host_name_);
  CopyText(f.text, why);
  SendFrame(zero.fd, f, /*wait=*/false);
}

absl::StatusOr<std::unique_ptr<Liveness>> Liveness::Listen(int world_size, const std::string& host,
                                                           const ProgressMeter* progress,
                                                           const LivenessOptions& options) {
  auto live = std::unique_ptr<Liveness>(new Liveness(0, world_size, progress, options));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), "0", &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("control channel: cannot resolve \"", host,
                                                   "\": ", gai_strerror(rc),
                                                   " (set SWITCHYARD_CONTROL_HOST)"));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(found, &freeaddrinfo);
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(Errno("control channel: socket"));
  live->listen_fd_ = fd;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (bind(fd, found->ai_addr, found->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
    return absl::UnavailableError(Errno(absl::StrCat("control channel: listen on ", host)));
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = addr.ss_family == AF_INET6
                       ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                       : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  live->endpoint_ = {.host = host,
                     .port = port,
                     .token = RandomToken(),
                     .pid = getpid(),
                     .host_name = live->host_name_};
  live->peers_.resize(world_size);
  live->peers_[0].rank = 0;
  live->peers_[0].fd = -2;  // this process: no connection
  live->peers_[0].pid = getpid();
  live->peers_[0].host = live->host_name_;
  return live;
}

absl::Status Liveness::AcceptPeers() {
  const absl::Time deadline = SteadyNow() + options_.connect_timeout;
  struct Pending {
    int fd;
    std::string buf;
  };
  std::vector<Pending> pending;
  int connected = 0;
  while (connected < world_size_ - 1) {
    const absl::Time now = SteadyNow();
    if (now >= deadline) {
      std::vector<int> missing;
      for (int r = 1; r < world_size_; ++r) {
        if (peers_[r].fd < 0) missing.push_back(r);
      }
      for (Pending& p : pending) close(p.fd);
      return absl::DeadlineExceededError(absl::StrCat(
          "control channel: rank(s) ", absl::StrJoin(missing, ", "), " did not connect to ",
          endpoint_.host, ":", endpoint_.port, " within ",
          absl::FormatDuration(options_.connect_timeout),
          " (a firewall between the nodes? SWITCHYARD_CONTROL_HOST picks rank 0's address)"));
    }
    std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
    for (const Pending& p : pending) fds.push_back({p.fd, POLLIN, 0});
    poll(fds.data(), fds.size(), 100);
    if (fds[0].revents & POLLIN) {  // everyone queued, not one per pass
      for (int fd; (fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0;) {
        pending.push_back({fd, {}});
      }
    }
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Pending& p = pending[i - 1];
      char buf[sizeof(Frame)];
      const ssize_t n = recv(p.fd, buf, sizeof(Frame) - p.buf.size(), MSG_DONTWAIT);
      if (n > 0) p.buf.append(buf, static_cast<size_t>(n));
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        close(p.fd);
        p.fd = -1;
        continue;
      }
      if (p.buf.size() < sizeof(Frame)) continue;
      Frame f;
      std::memcpy(&f, p.buf.data(), sizeof(f));
      const bool valid = f.magic == kMagic && f.type == kHello && f.rank > 0 &&
                         f.rank < world_size_ && ReadText(f.token) == endpoint_.token &&
                         peers_[f.rank].fd < 0;
      if (!valid) {  // not one of ours, or a duplicate: drop it
        spdlog::warn("control channel: refused a connection that is not a rank of this job");
        close(p.fd);
        p.fd = -1;
        continue;
      }
      Peer& peer = peers_[f.rank];
      peer.fd = p.fd;
      peer.rank = f.rank;
      peer.pid = f.pid;
      peer.host = ReadText(f.host);
      peer.last_seen = SteadyNow();
      peer.heard = true;  // its hello
      SetNoDelay(peer.fd);
      fcntl(peer.fd, F_SETFL, fcntl(peer.fd, F_GETFL) | O_NONBLOCK);
      p.fd = -1;
      ++connected;
    }
    std::erase_if(pending, [](const Pending& p) { return p.fd < 0; });
  }
  close(listen_fd_);  // every rank is here: nobody else may connect
  listen_fd_ = -1;
  StartThread();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Liveness>> Liveness::Connect(int rank, int world_size,
                                                            const Endpoint& endpoint,
                                                            const ProgressMeter* progress,
                                                            const LivenessOptions& options) {
  auto live = std::unique_ptr<Liveness>(new Liveness(rank, world_size, progress, options));
  live->endpoint_ = endpoint;
  const std::string where = absl::StrCat(endpoint.host, ":", endpoint.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(endpoint.port);
  if (int rc = getaddrinfo(endpoint.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("control channel: cannot resolve ", where, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(found, &freeaddrinfo);
  const absl::Time deadline = SteadyNow() + options.connect_timeout;
  int fd = -1;
  std::string last_error;
  while (fd < 0) {
    fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return absl::InternalError(Errno("control channel: socket"));
    // Non-blocking, bounded by the deadline: a firewall that drops packets must not hold
    // this rank for the kernel's two minutes.
    int rc = connect(fd, found->ai_addr, found->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd w{fd, POLLOUT, 0};
      const int64_t ms = std::clamp<int64_t>(
          absl::ToInt64Milliseconds(deadline - SteadyNow()), 1, 1000);
      if (poll(&w, 1, static_cast<int>(ms)) == 1) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        errno = err;
        rc = err == 0 ? 0 : -1;
      } else {
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) {
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // the hello is sent blocking
      break;
    }
    last_error = std::strerror(errno);
    close(fd);
    fd = -1;
    if (SteadyNow() >= deadline) {
      return absl::UnavailableError(absl::StrCat("control channel: rank ", rank,
                                                 " cannot reach rank 0 at ", where, ": ",
                                                 last_error));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  SetNoDelay(fd);
  Frame hello = NewFrame(kHello, rank, live->host_name_);
  CopyText(hello.token, endpoint.token);
  if (!SendFrame(fd, hello, /*wait=*/true)) {
    close(fd);
    return absl::UnavailableError(
        Errno(absl::StrCat("control channel: rank ", rank, " greeting rank 0 at ", where)));
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  Peer zero;
  zero.fd = fd;
  zero.rank = 0;
  zero.pid = endpoint.pid;
  zero.host = endpoint.host_name.empty() ? endpoint.host : endpoint.host_name;
  zero.last_seen = SteadyNow();
  live->peers_.push_back(std::move(zero));
  live->StartThread();
  return live;
}

absl::StatusOr<std::unique_ptr<Liveness>> Liveness::Start(Communicator& world,
                                                          const ProgressMeter* progress,
                                                          const LivenessOptions& options) {
  const int rank = world.rank(), size = world.size();
  // Where rank 0 listens: loopback when the whole job is on its host.
  char name[64] = {};
  std::snprintf(name, sizeof(name), "%s", HostName().c_str());
  std::vector<char> names(rank == 0 ? sizeof(name) * size : 0);
  RETURN_IF_ERROR(world.Gather(name, sizeof(name), names.data(), 0));
  struct Announce {
    int32_t code = 0;
    int32_t port = 0;
    int32_t pid = 0;
    char host[256] = {};
    char host_name[64] = {};
    char token[40] = {};
    char error[512] = {};
  } announce;
  std::unique_ptr<Liveness> live;
  if (rank == 0) {
    std::string host = "127.0.0.1";
    bool one_host = true;
    for (int r = 1; r < size; ++r) {
      one_host &= strncmp(names.data() + r * sizeof(name), name, sizeof(name)) == 0;
    }
    if (const char* env = std::getenv("SWITCHYARD_CONTROL_HOST"); env != nullptr && *env) {
      host = env;
    } else if (!one_host) {
      host = ClusterAddress();
      if (host.empty()) host = HostName();
    }
    auto listening = Listen(size, host, progress, options);
    if (listening.ok()) {
      live = std::move(listening).value();
      announce.port = live->endpoint().port;
      announce.pid = live->endpoint().pid;
      CopyText(announce.host_name, live->endpoint().host_name);
      CopyText(announce.host, host);
      CopyText(announce.token, live->endpoint().token);
    } else {
      announce.code = static_cast<int32_t>(listening.status().code());
      CopyText(announce.error, std::string(listening.status().message()));
    }
  }
  RETURN_IF_ERROR(world.Broadcast(&announce, sizeof(announce), 0));
  if (announce.code != 0) {
    return absl::Status(static_cast<absl::StatusCode>(announce.code),
                        ReadText(announce.error));
  }
  if (rank == 0) {
    RETURN_IF_ERROR(live->AcceptPeers());
    return live;
  }
  return Connect(rank, size,
                 {.host = ReadText(announce.host),
                  .port = announce.port,
                  .token = ReadText(announce.token),
                  .pid = announce.pid,
                  .host_name = ReadText(announce.host_name)},
                 progress, options);
}

void Liveness::StartThread() {
  thread_ = std::thread([this] { Loop(); });
}

absl::Status Liveness::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Liveness::OnFailure(std::function<void(const absl::Status&)> fn) {
  std::lock_guard<std::mutex> calling(callback_mu_);  // waits for a call in progress
  std::lock_guard<std::mutex> lock(mu_);
  on_failure_ = std::move(fn);
}

void Liveness::Fail(absl::Status status, bool from_rank0) {
  {
    std::lock_guard<std::mutex> calling(callback_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failure_.ok()) return;
      failure_ = status;
      failed_at_ = SteadyNow();
    }
    // Before any wait is released: the front end is NOT_SERVING before a client hears.
    if (on_failure_) on_failure_(status);
  }
  spdlog::error("{}", status.message());
  DeclareJobFailure(status);
  // A worker that gives up on rank 0 says why on the way out: if rank 0 was only stopped,
  // it reads this when it resumes and names the real cause, not this rank's exit.
  if (rank_ != 0 && !from_rank0) SendExit(std::string(status.message()));
}

void Liveness::ExpectOperationsEvery(absl::Duration cadence) {
  cadence_ns_.store(absl::ToInt64Nanoseconds(cadence));
}

void Liveness::SetLoadProgress(uint64_t done, uint64_t total) {
  load_done_.store(done, std::memory_order_relaxed);
  load_total_.store(total, std::memory_order_relaxed);
}

std::pair<uint64_t, uint64_t> Liveness::JobLoadProgress() const {
  uint64_t done = load_done_.load(), total = load_total_.load();
  std::lock_guard<std::mutex> lock(mu_);
  if (rank_ != 0) return {done, total};
  for (size_t r = 1; r < peers_.size(); ++r) {
    done += peers_[r].load_done;
    total += peers_[r].load_total;
  }
  return {done, total};
}

absl::Status Liveness::ConfirmAlive(absl::Duration within) {
  const absl::Time asked = SteadyNow();
  const absl::Time give_up = asked + within;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failure_.ok()) return failure_;
      bool all = true;
      for (size_t r = 1; r < peers_.size(); ++r) {
        const Peer& p = peers_[r];
        if (p.gone && !p.goodbye) return GoneError(DescribeLocked(p));  // not yet declared
        if (!p.gone && p.last_seen <= asked) all = false;
      }
      if (all || rank_ != 0) return absl::OkStatus();
    }
    if (SteadyNow() >= give_up) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(10));
  }
}

void Liveness::ReportExit(const absl::Status& why) {
  if (rank_ == 0 || peers_.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.ok()) return;  // this rank is exiting because of a failure it was told of
  }
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (!failure().ok()) return;  // declared (and reported) while the thread was stopping
  SendExit(std::string(why.message()));
}

void Liveness::End(const absl::Status& how) {
  if (rank_ == 0 || how.ok()) {
    Stop();
  } else {
    ReportExit(how);
  }
}

void Liveness::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (rank_ != 0) return;
  if (failure().ok()) {
    SendBeats(/*goodbye=*/true);
  } else {
    AbortWorkers();  // a failed job does not end in order: say why
  }
}

void Liveness::AbortWorkers() {
  const absl::Status failure = this->failure();
  if (rank_ != 0 || failure.ok()) return;
  std::lock_guard<std::mutex> lock(send_mu_);
  if (abort_sent_) return;
  SendAbort(std::string(failure.message()));
  abort_sent_ = true;
}

void Liveness::SendBeats(bool goodbye) {
  Frame f = NewFrame(goodbye ? kGoodbye : kBeat, rank_, host_name_);
  if (progress_ != nullptr) {
    const ProgressMeter::Reading r = progress_->Read();
    f.done = r.done;
    f.last_ns = r.last_ns;
  }
  f.waiting_on = WaitingNow();
  f.load_done = load_done_.load(std::memory_order_relaxed);
  f.load_total = load_total_.load(std::memory_order_relaxed);
  for (Peer& p : peers_) {
    if (p.fd < 0 || p.gone) continue;
    SendFrame(p.fd, f, /*wait=*/false);
  }
}

void Liveness::SendAbort(const std::string& reason) {
  Frame f = NewFrame(kAbort, rank_, host_name_);
  CopyText(f.text, reason);
  for (Peer& p : peers_) {
    if (p.fd >= 0 && !p.gone) SendFrame(p.fd, f, /*wait=*/false);
  }
}

bool Liveness::ReadFrom(Peer& peer) {
  char buf[4 * sizeof(Frame)];
  bool closed = false;
  while (true) {
    const ssize_t n = recv(peer.fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      peer.inbuf.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    closed = true;  // orderly close (0) or a reset: the process is gone
    break;
  }
  const absl::Time now = SteadyNow();
  std::vector<std::pair<uint16_t, std::string>> ends;  // exit or abort frames, with their text
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t at = 0;
    for (; at + sizeof(Frame) <= peer.inbuf.size(); at += sizeof(Frame)) {
      Frame f;
      std::memcpy(&f, peer.inbuf.data() + at, sizeof(f));
      if (f.magic != kMagic) {  // not our protocol: treat the peer as lost
        closed = true;
        break;
      }
      peer.last_seen = now;
      peer.heard = true;
      peer.pid = f.pid;
      if (f.host[0] != 0) peer.host = ReadText(f.host);
      if (f.type == kBeat) {
        peer.done = f.done;
        peer.last_ns = f.last_ns;
        peer.waiting_on = f.waiting_on;
        peer.load_done = f.load_done;
        peer.load_total = f.load_total;
      } else if (f.type == kGoodbye) {
        peer.goodbye = true;
      } else if (f.type == kExit || f.type == kAbort) {
        peer.goodbye = true;  // its end is reported here, not again as a lost connection
        ends.emplace_back(f.type, ReadText(f.text));
      }
    }
    peer.inbuf.erase(0, at);
    if (closed) peer.gone = true;
  }
  for (const auto& [type, text] : ends) {
    if (type == kExit) {
      Fail(absl::UnavailableError(absl::StrCat(Describe(peer.rank), " failed: ", text)));
    } else {
      Fail(absl::UnavailableError(absl::StrCat("the job failed (rank 0: ", text, ")")),
           /*from_rank0=*/true);
    }
  }
  return !closed;
}

void Liveness::CheckPeers(absl::Time now) {
  for (Peer& p : peers_) {
    if (p.fd == -2 || p.goodbye) continue;
    if (p.gone) {
      Fail(GoneError(Describe(p.rank)));
      p.goodbye = true;
      continue;
    }
    const absl::Duration silent = now - p.last_seen;
    // Rank 0 beats only once every rank has connected: until its first beat, a worker
    // allows as long as connecting may take.
    if (silent > (p.heard ? options_.timeout : options_.connect_timeout)) {
      Fail(absl::UnavailableError(absl::StrCat(
          Describe(p.rank), " has not answered for ", absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(100))),
          " (stopped, frozen or cut off)")));
      p.goodbye = true;
    }
  }
}

void Liveness::CheckProgress(absl::Time now) {
  if (rank_ != 0 || progress_ == nullptr) return;
  const ProgressMeter::Reading own = progress_->Read();
  std::vector<uint64_t> done(world_size_);
  std::vector<int> waiting(world_size_, -1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    peers_[0].done = own.done;
    peers_[0].last_ns = own.last_ns;
    peers_[0].waiting_on = WaitingNow();
    for (int r = 0; r < world_size_; ++r) {
      Peer& p = peers_[r];
      done[r] = p.done;
      waiting[r] = p.waiting_on;
      // Note who finished each operation first, and how long it took there.
      const uint64_t from = std::max(p.seen_done, p.done > 64 ? p.done - 64 : 0);
      for (uint64_t k = from + 1; k <= p.done; ++k) {
        finished_.try_emplace(k, Finished{now, absl::Nanoseconds(p.last_ns), r});
      }
      p.seen_done = p.done;
    }
  }
  const uint64_t lowest = *std::min_element(done.begin(), done.end());
  finished_.erase(finished_.begin(), finished_.lower_bound(lowest + 1));
  // Ranks behind an operation another rank finished longer ago than the limit.
  struct Behind {
    int rank;
    uint64_t op;
    const Finished* first;
    absl::Duration for_how_long;
  };
  std::vector<Behind> behind;
  for (int r = 0; r < world_size_; ++r) {
    if (r > 0 && (peers_[r].gone || peers_[r].goodbye)) continue;
    auto it = finished_.find(done[r] + 1);
    if (it == finished_.end() || it->second.rank == r) continue;
    const absl::Duration limit =
        std::max(options_.timeout, 2 * std::max(1, options_.pipeline_stages) * it->second.took);
    const absl::Duration lag = now - it->second.at;
    if (lag > limit) behind.push_back({r, done[r] + 1, &it->second, lag});
  }
  auto round = [](absl::Duration d) { return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(100))); };
  // A rank waiting for a peer's data is a victim, not the culprit: name a rank that is behind
  // and not waiting, else the rank such a victim waits for (when that one is not waiting).
  for (const Behind& b : behind) {
    if (waiting[b.rank] >= 0) continue;
    Fail(absl::UnavailableError(absl::StrCat(
        Describe(b.rank), " is stuck: it has not finished operation ", b.op, ", which ",
        Describe(b.first->rank), " finished ", round(b.for_how_long), " ago")));
    return;
  }
  for (const Behind& b : behind) {
    const int suspect = waiting[b.rank];
    if (suspect < 0 || suspect >= world_size_ || suspect == b.rank || waiting[suspect] >= 0) continue;
    Fail(absl::UnavailableError(absl::StrCat(
        Describe(suspect), " is stuck: ", Describe(b.rank), " has waited for it in operation ",
        b.op, ", which ", Describe(b.first->rank), " finished ", round(b.for_how_long), " ago")));
    return;
  }
  // Rank 0's scheduler starts an operation every `cadence` when serving.
  const int64_t cadence = cadence_ns_.load();
  if (cadence > 0 && own.busy_ns == 0 &&
      absl::Nanoseconds(own.idle_ns) > absl::Nanoseconds(cadence) + options_.timeout) {
    Fail(absl::UnavailableError(absl::StrCat(
        Describe(0), " is stuck: its scheduler has started no operation for ",
        round(absl::Nanoseconds(own.idle_ns)), " (it starts one at least every ",
        absl::FormatDuration(absl::Nanoseconds(cadence)), ")")));
  }
}

void Liveness::LogJobLoad(absl::Time now) {
  uint64_t done = 0, total = 0;
  int loading = 0, reported = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t r = 0; r < peers_.size(); ++r) {
      const uint64_t d = r == 0 ? load_done_.load() : peers_[r].load_done;
      const uint64_t t = r == 0 ? load_total_.load() : peers_[r].load_total;
      if (t == 0) continue;
      ++reported;
      loading += d < t;
      done += d;
      total += t;
    }
  }
  last_load_log_ = now;
  if (loading == 0) return;  // nothing loading (or done): stay quiet
  spdlog::info("job loading weights: {} / {} ({} of {} ranks reporting, {} still loading)",
               ByteProgress::FormatBytes(static_cast<double>(done)),
               ByteProgress::FormatBytes(static_cast<double>(total)), reported, world_size_,
               loading);
}

void Liveness::Loop() {
  last_load_log_ = SteadyNow();
  absl::Time next_beat = SteadyNow();
  std::vector<pollfd> fds;
  std::vector<Peer*> polled;
  while (!stop_.load()) {
    if (frozen_.load()) {
      absl::SleepFor(absl::Milliseconds(10));
      continue;
    }
    absl::Time now = SteadyNow();
    if (now >= next_beat) {
      SendBeats(/*goodbye=*/false);
      next_beat = now + options_.interval;
    }
    fds.clear();
    polled.clear();
    for (Peer& p : peers_) {
      if (p.fd < 0 || p.gone) continue;
      fds.push_back({p.fd, POLLIN, 0});
      polled.push_back(&p);
    }
    const int64_t wait_ms =
        std::clamp<int64_t>(absl::ToInt64Milliseconds(next_beat - now), 1, 50);
    poll(fds.data(), fds.size(), static_cast<int>(wait_ms));
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents != 0) ReadFrom(*polled[i]);
    }
    now = SteadyNow();
    if (failure().ok()) {
      CheckPeers(now);
      CheckProgress(now);
    }
    if (rank_ == 0 && now - last_load_log_ >= absl::Seconds(10)) LogJobLoad(now);
    absl::Duration since_failure;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (failure_.ok()) continue;
      since_failure = now - failed_at_;
    }
    // The workers exit now, with rank 0's reason in their logs (if serve has not yet).
    if (rank_ == 0 && since_failure >= options_.abort_delay) AbortWorkers();
    if (options_.exit_process && options_.exit_grace > absl::ZeroDuration() &&
        since_failure >= options_.exit_grace) {
      spdlog::error("exiting {} after the failure above", absl::FormatDuration(since_failure));
      spdlog::default_logger()->flush();
      _exit(1);
    }
  }
}

}  // namespace switchyard
