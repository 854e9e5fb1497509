#include "hypervisor/libvirt/libvirt_error.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "absl/strings/str_cat.h"

namespace hvagent::hv {
namespace {

absl::StatusCode CodeFor(int vir_code) {
  switch (vir_code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_NETWORK:
    case VIR_ERR_NO_STORAGE_POOL:
    case VIR_ERR_NO_STORAGE_VOL:
    case VIR_ERR_DEVICE_MISSING:
      return absl::StatusCode::kNotFound;
    case VIR_ERR_OPERATION_INVALID:
      return absl::StatusCode::kFailedPrecondition;
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
      return absl::StatusCode::kUnimplemented;
    case VIR_ERR_XML_ERROR:
    case VIR_ERR_XML_DETAIL:
    case VIR_ERR_INVALID_ARG:
    case VIR_ERR_CONFIG_UNSUPPORTED:
      return absl::StatusCode::kInvalidArgument;
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_INVALID_CONN:
    case VIR_ERR_RPC:
    case VIR_ERR_SYSTEM_ERROR:
    case VIR_ERR_AUTH_FAILED:
      return absl::StatusCode::kUnavailable;
    case VIR_ERR_OPERATION_TIMEOUT:
      return absl::StatusCode::kDeadlineExceeded;
    case VIR_ERR_OPERATION_DENIED:
    case VIR_ERR_ACCESS_DENIED:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kInternal;
  }
}

void IgnoreError(void*, virErrorPtr) {}

}  // namespace

absl::Status LastLibvirtError(absl::string_view what) {
  int ignored = 0;
  return LastLibvirtError(what, &ignored);
}

absl::Status LastLibvirtError(absl::string_view what, int* vir_code) {
  virErrorPtr err = virGetLastError();
  *vir_code = 0;
  if (err == nullptr) return absl::InternalError(absl::StrCat(what, ": libvirt failed without an error"));
  *vir_code = err->code;
  absl::Status status(CodeFor(err->code), absl::StrCat(what, ": ", err->message ? err->message : "unknown error"));
  virResetLastError();
  return status;
}

void SilenceLibvirtErrorPrinting() { virSetErrorFunc(nullptr, IgnoreError); }

}  // namespace hvagent::hv
