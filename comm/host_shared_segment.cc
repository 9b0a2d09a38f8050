#include "comm/host_shared_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/job_failure.h"
#include "comm/poll_backoff.h"
#include "common/steady_time.h"

namespace switchyard {
namespace {

// One rank's block: the flags and the payload, whole pages.
size_t Stride(size_t bytes_per_rank) {
  return (HostSharedSegment::kHeaderBytes + bytes_per_rank + 4095) / 4096 * 4096;
}

absl::Status Errno(absl::string_view what, const std::string& name, int err) {
  return absl::UnavailableError(absl::StrCat(what, " of shared memory ", name, ": ", strerror(err)));
}

}  // namespace

absl::StatusOr<HostMapping> HostMapping::Create(const std::string& name, size_t bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0 && errno == EEXIST) {
    return absl::AlreadyExistsError(absl::StrCat("shared memory ", name, " already exists"));
  }
  if (fd < 0) return Errno("shm_open", name, errno);
  HostMapping m;
  m.name_ = name;
  m.owner_ = true;
  // posix_fallocate reserves the pages, so a full /dev/shm is an error here, not a SIGBUS.
  if (const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) {
    close(fd);
    if (err == ENOSPC) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "shared memory ", name, ": ", bytes, " bytes do not fit in /dev/shm (", strerror(err), ")"));
    }
    return Errno("posix_fallocate", name, err);
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) return Errno("mmap", name, err);
  m.data_ = static_cast<char*>(p);
  m.bytes_ = bytes;
  return m;
}

absl::StatusOr<HostMapping> HostMapping::Open(const std::string& name, size_t bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) return Errno("shm_open", name, errno);
  struct stat st {};
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < bytes) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("shared memory ", name, " is smaller than ", bytes,
                                               " bytes"));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) return Errno("mmap", name, err);
  HostMapping m;
  m.name_ = name;
  m.data_ = static_cast<char*>(p);
  m.bytes_ = bytes;
  return m;
}

HostMapping::HostMapping(HostMapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      name_(std::move(other.name_)),
      owner_(std::exchange(other.owner_, false)) {}

HostMapping& HostMapping::operator=(HostMapping&& other) noexcept {
  if (this == &other) return *this;
  Reset();
  data_ = std::exchange(other.data_, nullptr);
  bytes_ = std::exchange(other.bytes_, 0);
  name_ = std::move(other.name_);
  owner_ = std::exchange(other.owner_, false);
  return *this;
}

HostMapping::~HostMapping() { Reset(); }

void HostMapping::Reset() {
  if (data_ != nullptr) munmap(data_, bytes_);
  data_ = nullptr;
  bytes_ = 0;
  Unlink();
}

void HostMapping::Unlink() {
  if (owner_) shm_unlink(name_.c_str());
  owner_ = false;
}

size_t HostSharedSegment::MappingBytes(int size, size_t bytes_per_rank) {
  return static_cast<size_t>(size) * Stride(bytes_per_rank);
}

HostSharedSegment::HostSharedSegment(HostMapping mapping, int rank, int size,
                                     size_t bytes_per_rank, SegmentPeers peers)
    : mapping_(std::move(mapping)),
      rank_(rank),
      size_(size),
      bytes_per_rank_(bytes_per_rank),
      stride_(Stride(bytes_per_rank)),
      peers_(std::move(peers)) {
  static_assert(kSlots * 64 <= kHeaderBytes);
}

// The flags are shared between processes: only lock-free atomics work across them.
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);

void HostSharedSegment::Post(int slot, uint64_t value) {
  std::atomic_ref<uint64_t>(*Flag(rank_, slot)).store(value, std::memory_order_release);
}

absl::Status HostSharedSegment::WaitAll(int slot, uint64_t value, absl::string_view op) {
  if (JobFailed()) return JobFailure();
  if (broken_) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, ": the shared memory of group ", peers_.group, " is unusable after an earlier failure"));
  }
  auto behind = [&](int r) {
    return r != rank_ &&
           std::atomic_ref<uint64_t>(*Flag(r, slot)).load(std::memory_order_acquire) < value;
  };
  int next = 0;  // every rank below it has arrived
  while (next < size_ && !behind(next)) ++next;
  if (next == size_) return absl::OkStatus();
  const absl::Time deadline = SteadyNow() + peers_.timeout;
  PollBackoff backoff;
  EnterWait(peers_.world_ranks[next]);
  struct Unmark {
    ~Unmark() { LeaveWait(); }
  } unmark;
  while (true) {
    const int before = next;
    while (next < size_ && !behind(next)) ++next;
    if (next == size_) return absl::OkStatus();
    if (next != before) {
      EnterWait(peers_.world_ranks[next]);
      backoff.Progressed();
      continue;
    }
    if (JobFailed()) {
      broken_ = true;
      return JobFailure();
    }
    const absl::Time now = SteadyNow();
    if (now >= deadline) {
      broken_ = true;
      std::vector<int> group, world;
      for (int r = next; r < size_; ++r) {
        if (behind(r)) group.push_back(r), world.push_back(peers_.world_ranks[r]);
      }
      return absl::DeadlineExceededError(absl::StrCat(
          op, " on group ", peers_.group, ": rank(s) ", absl::StrJoin(group, ", "),
          " (world rank(s) ", absl::StrJoin(world, ", "), ") did not arrive after ",
          absl::FormatDuration(peers_.timeout), " (waiting: rank ", rank_, ", world rank ",
          peers_.world_ranks[rank_], ")"));
    }
    backoff.Idle(now);
  }
}

}  // namespace switchyard
