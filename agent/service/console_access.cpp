#include "agent/service/console_access.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "hypervisor/console.h"

namespace hvagent::service {

absl::StatusOr<ConsoleAccess::Ticket> ConsoleAccess::Issue(const std::string& domain, ConsoleKind kind) {
  if (kind != ConsoleKind::kSerialTcp || tcp_ == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("kind: ", ConsoleKindName(kind), " consoles have no endpoint in this agent yet"));
  }
  auto info = hypervisor_.GetDomain(domain);
  if (!info.ok()) return info.status();
  if (info->state != hv::DomainState::kRunning && info->state != hv::DomainState::kPaused &&
      info->state != hv::DomainState::kBlocked) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", domain, "' is not running: it has no console now"));
  }
  auto issued = tickets_.Issue(domain, kind);
  if (!issued.ok()) return issued.status();
  auto port = tcp_->Open(domain, issued->ticket, issued->expires);
  if (!port.ok()) {
    tickets_.Revoke(issued->ticket);
    return port.status();
  }
  const auto left = issued->expires - std::chrono::steady_clock::now();
  return Ticket{issued->ticket,
                domain,
                kind,
                std::chrono::system_clock::now() + std::chrono::duration_cast<std::chrono::system_clock::duration>(left),
                tcp_->options().address,
                *port};
}

absl::StatusOr<ConsoleAccess::LogTail> ConsoleAccess::Log(const std::string& domain, uint64_t tail_bytes) {
  if (tail_bytes > kMaxTail) {
    return absl::InvalidArgumentError(absl::StrCat("tail_bytes: at most ", kMaxTail, ", got ", tail_bytes));
  }
  if (tail_bytes == 0) tail_bytes = kDefaultTail;
  // The domain first: a name that is no domain never reaches the file system.
  auto info = hypervisor_.GetDomain(domain);
  if (!info.ok()) return info.status();
  if (options_.log_dir.empty()) {
    return absl::FailedPreconditionError("console logs are not kept by this agent ([console] log_dir is empty)");
  }
  const std::string path = hv::ConsoleLogPath(options_.log_dir, info->name);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain '", domain, "' has no console log (defined without one, or never started)"));
  }
  if (fd < 0) return absl::InternalError(absl::StrCat("console log of ", domain, ": ", std::strerror(errno)));
  struct stat st {};
  LogTail tail;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    tail.size = static_cast<uint64_t>(st.st_size);
    const uint64_t from = tail.size > tail_bytes ? tail.size - tail_bytes : 0;
    tail.data.resize(tail.size - from);
    ssize_t n = pread(fd, tail.data.data(), tail.data.size(), static_cast<off_t>(from));
    tail.data.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  close(fd);
  return tail;
}

}  // namespace hvagent::service
