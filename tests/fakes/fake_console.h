#pragma once
// FakeConsoleOpener: an in-memory hv::ConsoleOpener for unit tests. A test makes a domain's
// console exist (AddDomain), plays the guest (Emit output, Hangup), and reads what was typed
// (Typed). Callbacks run on the test's thread, inside Emit/Hangup, as the event thread would.

#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "hypervisor/console.h"

namespace hvagent::testing {

class FakeConsoleOpener final : public hv::ConsoleOpener {
 public:
  void AddDomain(const std::string& name, bool running = true) {
    std::lock_guard lock(mu_);
    domains_[name].running = running;
  }
  // The guest writes `bytes` to its console.
  void Emit(const std::string& name, const std::string& bytes) {
    hv::ConsoleCallbacks cb;
    {
      std::lock_guard lock(mu_);
      auto& d = domains_.at(name);
      if (!d.open) return;
      cb = d.callbacks;
    }
    cb.on_output(bytes);
  }
  // The console ends by itself (the guest stopped).
  void Hangup(const std::string& name) {
    hv::ConsoleCallbacks cb;
    {
      std::lock_guard lock(mu_);
      auto& d = domains_.at(name);
      if (!d.open) return;
      d.open = false;
      cb = d.callbacks;
    }
    cb.on_closed(absl::OkStatus());
  }
  std::string Typed(const std::string& name) {
    std::lock_guard lock(mu_);
    return domains_.at(name).typed;
  }
  bool IsOpen(const std::string& name) {
    std::lock_guard lock(mu_);
    return domains_.at(name).open;
  }
  int opens(const std::string& name) {
    std::lock_guard lock(mu_);
    return domains_.at(name).opens;
  }
  size_t input_capacity = 64 * 1024;

  absl::StatusOr<std::unique_ptr<hv::ConsoleChannel>> OpenConsole(const std::string& name,
                                                                  hv::ConsoleCallbacks callbacks) override {
    std::lock_guard lock(mu_);
    auto it = domains_.find(name);
    if (it == domains_.end()) return absl::NotFoundError(absl::StrCat("domain '", name, "' not found"));
    if (!it->second.running) {
      return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is not running: it has no console now"));
    }
    it->second.open = true;
    it->second.opens++;
    it->second.callbacks = std::move(callbacks);
    return std::unique_ptr<hv::ConsoleChannel>(new Channel(*this, name));
  }

 private:
  struct Domain {
    bool running = true;
    bool open = false;
    int opens = 0;
    std::string typed;
    hv::ConsoleCallbacks callbacks;
  };

  class Channel final : public hv::ConsoleChannel {
   public:
    Channel(FakeConsoleOpener& f, std::string name) : f_(f), name_(std::move(name)) {}
    ~Channel() override { Close(); }
    absl::Status Write(std::string_view bytes) override {
      std::lock_guard lock(f_.mu_);
      auto& d = f_.domains_.at(name_);
      if (!d.open) return absl::FailedPreconditionError("closed");
      if (d.typed.size() + bytes.size() > f_.input_capacity) return absl::ResourceExhaustedError("input full");
      d.typed.append(bytes);
      return absl::OkStatus();
    }
    void Close() override {
      std::lock_guard lock(f_.mu_);
      f_.domains_.at(name_).open = false;
    }

   private:
    FakeConsoleOpener& f_;
    const std::string name_;
  };

  std::mutex mu_;
  std::map<std::string, Domain> domains_;
};

}  // namespace hvagent::testing
