#pragma once
// LibvirtEventLoop: the process-wide thread that runs libvirt's default event loop, which
// delivers domain lifecycle events and connection-close notices. Shared by every connection;
// the thread runs while at least one Acquire()d handle is alive.

#include <memory>

namespace hvagent::hv {

class LibvirtEventLoop {
 public:
  // Registers libvirt's default event implementation (once per process, before any
  // virConnectOpen) and starts the loop thread if it is not running.
  static std::shared_ptr<LibvirtEventLoop> Acquire();
  ~LibvirtEventLoop();

  LibvirtEventLoop(const LibvirtEventLoop&) = delete;
  LibvirtEventLoop& operator=(const LibvirtEventLoop&) = delete;

 private:
  LibvirtEventLoop();
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace hvagent::hv
