// RealXenCtrlCalls: XenCtrlCalls over libxenctrl. The only file that includes <xenctrl.h>; built
// only when pkg-config finds xencontrol (HVAGENT_HAVE_XENCTRL). It cannot run without a Xen
// dom0, so unit tests use a fake; it is exercised only by the Xen ARM64 system test.

// Xen's tool headers have no extern "C" guards of their own.
extern "C" {
#include <xenctrl.h>
#include <xentoollog.h>
}

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "hypervisor/xen/xenctrl_probe.h"

namespace hvagent::hv {
namespace {

class RealXenCtrlCalls final : public XenCtrlCalls {
 public:
  RealXenCtrlCalls(xentoollog_logger_stdiostream* logger, xc_interface* xch) : logger_(logger), xch_(xch) {}
  ~RealXenCtrlCalls() override {
    xc_interface_close(xch_);
    xtl_logger_destroy(reinterpret_cast<xentoollog_logger*>(logger_));
  }
  RealXenCtrlCalls(const RealXenCtrlCalls&) = delete;
  RealXenCtrlCalls& operator=(const RealXenCtrlCalls&) = delete;

  int DomainGetInfoList(uint32_t first_domain, unsigned int max_domains,
                        std::vector<XenDomainListEntry>* out) override {
    std::vector<xc_domaininfo_t> info(max_domains);
    errno = 0;
    const int n = xc_domain_getinfolist(xch_, first_domain, max_domains, info.data());
    if (n < 0) return Errno();
    for (int i = 0; i < n && static_cast<unsigned int>(i) < max_domains; ++i) {
      out->push_back({.domid = info[i].domain, .dying = (info[i].flags & XEN_DOMINF_dying) != 0});
    }
    return 0;
  }

  int EvtchnStatus(uint32_t domid, uint32_t port, EvtchnPortState* state) override {
    xc_evtchn_status_t status;
    std::memset(&status, 0, sizeof(status));
    status.dom = static_cast<domid_t>(domid);
    status.port = port;
    errno = 0;
    if (xc_evtchn_status(xch_, &status) < 0) return Errno();
    switch (status.status) {
      case EVTCHNSTAT_closed:
        *state = EvtchnPortState::kClosed;
        break;
      case EVTCHNSTAT_unbound:
        *state = EvtchnPortState::kUnbound;
        break;
      case EVTCHNSTAT_interdomain:
        *state = EvtchnPortState::kInterdomain;
        break;
      case EVTCHNSTAT_pirq:
        *state = EvtchnPortState::kPirq;
        break;
      case EVTCHNSTAT_virq:
        *state = EvtchnPortState::kVirq;
        break;
      case EVTCHNSTAT_ipi:
        *state = EvtchnPortState::kIpi;
        break;
      default:
        // A state newer than these headers: the port is in use by something.
        *state = EvtchnPortState::kUnbound;
        break;
    }
    return 0;
  }

  int DomainGetGuestWidth(uint32_t domid, unsigned int* width_bytes) override {
    errno = 0;
    if (xc_domain_get_guest_width(xch_, domid, width_bytes) != 0) return Errno();
    return 0;
  }

 private:
  // libxenctrl reports failure through errno; never report success by accident.
  static int Errno() { return errno != 0 ? errno : EIO; }

  xentoollog_logger_stdiostream* logger_;
  xc_interface* xch_;
};

}  // namespace

bool XenCtrlBuiltIn() { return true; }

absl::StatusOr<std::unique_ptr<XenCtrlCalls>> OpenRealXenCtrlCalls() {
  // Failures come back as statuses; only critical messages reach stderr.
  xentoollog_logger_stdiostream* logger = xtl_createlogger_stdiostream(stderr, XTL_CRITICAL, 0);
  if (logger == nullptr) return absl::ResourceExhaustedError("xtl_createlogger_stdiostream failed");
  errno = 0;
  xc_interface* xch = xc_interface_open(reinterpret_cast<xentoollog_logger*>(logger), nullptr, 0);
  if (xch == nullptr) {
    const int err = errno != 0 ? errno : EIO;
    xtl_logger_destroy(reinterpret_cast<xentoollog_logger*>(logger));
    std::string message = absl::StrCat("xc_interface_open: ", std::strerror(err), " (errno ", err, ")");
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(message, "; needs root in dom0"));
    }
    return absl::UnavailableError(absl::StrCat(message, "; not a Xen dom0 (no /dev/xen/privcmd?)"));
  }
  return std::make_unique<RealXenCtrlCalls>(logger, xch);
}

}  // namespace hvagent::hv
