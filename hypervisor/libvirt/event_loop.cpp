#include "hypervisor/libvirt/event_loop.h"

#include <atomic>
#include <mutex>
#include <thread>

#include <libvirt/libvirt.h>

#include "common/log.h"

namespace hvagent::hv {

struct LibvirtEventLoop::State {
  std::atomic<bool> stop{false};
  std::thread thread;
  int wake_timer = -1;
};

namespace {
std::once_flag g_register_once;
std::mutex g_mu;
std::weak_ptr<LibvirtEventLoop> g_loop;

// A periodic no-op timer: guarantees virEventRunDefaultImpl returns regularly so the loop can
// notice it should stop.
void WakeTick(int, void*) {}
}  // namespace

std::shared_ptr<LibvirtEventLoop> LibvirtEventLoop::Acquire() {
  std::call_once(g_register_once, [] { virEventRegisterDefaultImpl(); });
  std::lock_guard lock(g_mu);
  if (auto loop = g_loop.lock()) return loop;
  std::shared_ptr<LibvirtEventLoop> loop(new LibvirtEventLoop());
  g_loop = loop;
  return loop;
}

LibvirtEventLoop::LibvirtEventLoop() : state_(std::make_unique<State>()) {
  state_->wake_timer = virEventAddTimeout(200, WakeTick, nullptr, nullptr);
  State* st = state_.get();
  st->thread = std::thread([st] {
    auto log = log::ComponentLogger("libvirt-events");
    log->debug("event loop started");
    while (!st->stop.load()) {
      if (virEventRunDefaultImpl() < 0) log->warn("virEventRunDefaultImpl failed");
    }
    log->debug("event loop stopped");
  });
}

LibvirtEventLoop::~LibvirtEventLoop() {
  state_->stop.store(true);
  state_->thread.join();
  if (state_->wake_timer >= 0) virEventRemoveTimeout(state_->wake_timer);
}

}  // namespace hvagent::hv
