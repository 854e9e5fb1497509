#pragma once
// FakeCommandRunner: scripted CommandRunner for storage unit tests. Each expectation matches a
// command by its argv prefix and answers with a result or an error; every call is recorded so a
// test can assert exactly which programs ran, in which order, with which arguments.

#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "storage/exec/command_runner.h"

namespace hvagent::testing {

class FakeCommandRunner final : public storage::CommandRunner {
 public:
  using Handler = std::function<absl::StatusOr<storage::CommandResult>(const storage::Command&)>;

  // Answers the next command whose argv starts with `prefix` (once, in FIFO order per prefix).
  void Expect(std::vector<std::string> prefix, absl::StatusOr<storage::CommandResult> result) {
    std::lock_guard lock(mu_);
    rules_.push_back({std::move(prefix), [result](const storage::Command&) { return result; }, true});
  }
  // Answers every command starting with `prefix` through `handler`, as often as it is called.
  void Always(std::vector<std::string> prefix, Handler handler) {
    std::lock_guard lock(mu_);
    rules_.push_back({std::move(prefix), std::move(handler), false});
  }
  static storage::CommandResult Ok(std::string out = "") { return {0, std::move(out), ""}; }
  static storage::CommandResult Fail(int code, std::string err) { return {code, "", std::move(err)}; }

  absl::StatusOr<storage::CommandResult> Run(const storage::Command& c) override {
    std::lock_guard lock(mu_);
    calls_.push_back(c.argv);
    for (auto it = rules_.begin(); it != rules_.end(); ++it) {
      if (!Matches(it->prefix, c.argv)) continue;
      Handler h = it->handler;
      if (it->once) rules_.erase(it);
      return h(c);
    }
    return absl::InternalError("FakeCommandRunner: unexpected command: " + absl::StrJoin(c.argv, " "));
  }

  std::vector<std::vector<std::string>> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  // Commands run whose argv[0] ends with `program` (e.g. "lvcreate").
  int CountOf(const std::string& program) const {
    std::lock_guard lock(mu_);
    int n = 0;
    for (const auto& a : calls_) {
      if (!a.empty() && a[0].size() >= program.size() &&
          a[0].compare(a[0].size() - program.size(), program.size(), program) == 0) {
        ++n;
      }
    }
    return n;
  }

 private:
  struct Rule {
    std::vector<std::string> prefix;
    Handler handler;
    bool once;
  };
  static bool Matches(const std::vector<std::string>& prefix, const std::vector<std::string>& argv) {
    if (prefix.size() > argv.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i) {
      if (prefix[i] != argv[i]) return false;
    }
    return true;
  }
  mutable std::mutex mu_;
  std::deque<Rule> rules_;
  std::vector<std::vector<std::string>> calls_;
};

}  // namespace hvagent::testing
