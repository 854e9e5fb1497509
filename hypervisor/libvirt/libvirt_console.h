#pragma once
// The libvirt ConsoleChannel: virDomainOpenConsole into a non-blocking virStream whose events
// (virStreamEventAddCallback) arrive on the shared libvirt event loop thread (event_loop.h), so
// an open console costs no thread. Called by LibvirtHypervisor::OpenConsole only.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hypervisor/console.h"

typedef struct _virConnect* virConnectPtr;
typedef struct _virDomain* virDomainPtr;

namespace hvagent::hv {

// Opens `dom`'s first console. The agent is the host's console broker, so the open is forced:
// a console session left by someone else (a stale `virsh console`) is taken over.
absl::StatusOr<std::unique_ptr<ConsoleChannel>> OpenLibvirtConsole(virConnectPtr conn, virDomainPtr dom,
                                                                   const std::string& name,
                                                                   ConsoleCallbacks callbacks);

}  // namespace hvagent::hv
