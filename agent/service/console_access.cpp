#include "agent/service/console_access.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/random_text.h"
#include "hypervisor/console.h"

namespace hvagent::service {
namespace {

std::string PercentEncode(const std::string& s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '.' || c == '-' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<ConsoleAccess::Ticket> ConsoleAccess::IssueVnc(const hv::DomainInfo& info) {
  if (info.state != hv::DomainState::kRunning && info.state != hv::DomainState::kPaused &&
      info.state != hv::DomainState::kBlocked) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", info.name, "' is not running: it has no display now"));
  }
  // 8 characters: all VNC authentication reads of a password (about 47.6 bits here).
  auto password = RandomAlphanumeric(8);
  if (!password.ok()) return password.status();
  const auto expires = std::chrono::system_clock::now() + options_.vnc_ttl;
  // The new password replaces the last ticket's at once: at most one password opens a display.
  auto display = hypervisor_.SetVncPassword(info.name, *password, expires);
  if (!display.ok()) return display.status();
  Ticket t;
  t.domain = info.name;
  t.kind = ConsoleKind::kVnc;
  // libvirt's expiry has whole seconds: the answer says the second it ends, never later.
  t.expires = std::chrono::time_point_cast<std::chrono::seconds>(expires);
  t.host = display->listen;
  t.port = display->port;
  t.password = std::move(*password);
  return t;
}

absl::StatusOr<ConsoleAccess::Ticket> ConsoleAccess::Issue(const std::string& domain, ConsoleKind kind) {
  // The domain first, whatever the kind: "no such guest" is the more useful answer (and the one
  // Nova expects before "console type unavailable").
  auto info = hypervisor_.GetDomain(domain);
  if (!info.ok()) return info.status();
  if (kind == ConsoleKind::kVnc) {
    // Xen on Arm emulates no display at all: a Xen guest's one console is the PV console. Say
    // so, rather than "not built", so that a controller offers the text console instead.
    auto host = hypervisor_.GetHostInfo();
    if (host.ok() && host->hypervisor_type == "Xen") {
      return absl::FailedPreconditionError(absl::StrCat(
          "kind: vnc: domain '", domain,
          "' has no graphical console (a Xen guest's console is its PV console, hvc0): ask for serial-ws or "
          "serial-tcp"));
    }
    return IssueVnc(*info);
  }
  const bool served = (kind == ConsoleKind::kSerialTcp && tcp_ != nullptr) ||
                      (kind == ConsoleKind::kSerialWs && !options_.ws_base_url.empty());
  if (!served) {
    return absl::UnimplementedError(absl::StrCat("kind: ", ConsoleKindName(kind), " consoles have no endpoint in this agent",
                                                 kind == ConsoleKind::kSerialWs ? " ([console] ws_listen is not set)" : ""));
  }
  if (info->state != hv::DomainState::kRunning && info->state != hv::DomainState::kPaused &&
      info->state != hv::DomainState::kBlocked) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", domain, "' is not running: it has no console now"));
  }
  auto issued = tickets_.Issue(domain, kind);
  if (!issued.ok()) return issued.status();
  const auto left = issued->expires - std::chrono::steady_clock::now();
  Ticket t{issued->ticket,
           domain,
           kind,
           std::chrono::system_clock::now() + std::chrono::duration_cast<std::chrono::system_clock::duration>(left),
           {},
           0,
           {}};
  if (kind == ConsoleKind::kSerialWs) {
    // The WebSocket listener is always there; the ticket is redeemed when the page's socket
    // opens. A domain defined outside the agent may have any name: percent-encoded.
    t.host = options_.ws_host;
    t.port = options_.ws_port;
    t.url = absl::StrCat(options_.ws_base_url, "/console/", PercentEncode(info->name), "?ticket=", issued->ticket);
    return t;
  }
  auto port = tcp_->Open(domain, issued->ticket, issued->expires);
  if (!port.ok()) {
    tickets_.Revoke(issued->ticket);
    return port.status();
  }
  t.host = tcp_->options().address;
  t.port = *port;
  return t;
}

// QEMU/KVM guests log through libvirt's chardev <log> into the agent's directory; Xen guests'
// consoles are xenconsoled's, which logs each to guest-NAME.log in its own directory. The name
// is a domain's (it was found first), so it cannot climb out of either directory.
absl::StatusOr<std::string> ConsoleAccess::LogPath(const std::string& name) {
  auto host = hypervisor_.GetHostInfo();
  if (!host.ok()) return host.status();
  if (host->hypervisor_type == "Xen") {
    if (options_.xen_log_dir.empty()) {
      return absl::FailedPreconditionError("console logs are not served on this Xen host ([console] xen_log_dir is empty)");
    }
    return absl::StrCat(options_.xen_log_dir, "/guest-", name, ".log");
  }
  if (options_.log_dir.empty()) {
    return absl::FailedPreconditionError("console logs are not kept by this agent ([console] log_dir is empty)");
  }
  return hv::ConsoleLogPath(options_.log_dir, name);
}

absl::StatusOr<ConsoleAccess::LogTail> ConsoleAccess::Log(const std::string& domain, uint64_t tail_bytes) {
  if (tail_bytes > kMaxTail) {
    return absl::InvalidArgumentError(absl::StrCat("tail_bytes: at most ", kMaxTail, ", got ", tail_bytes));
  }
  if (tail_bytes == 0) tail_bytes = kDefaultTail;
  // The domain first: a name that is no domain never reaches the file system.
  auto info = hypervisor_.GetDomain(domain);
  if (!info.ok()) return info.status();
  auto path = LogPath(info->name);
  if (!path.ok()) return path.status();
  int fd = open(path->c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
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
