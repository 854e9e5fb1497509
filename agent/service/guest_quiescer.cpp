#include "agent/service/guest_quiescer.h"

#include "absl/strings/str_cat.h"
#include "common/failpoint.h"
#include "common/log.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("quiesce");
  return logger;
}

constexpr char kFreezeStep[] = "freeze";
constexpr char kPauseStep[] = "pause";
constexpr char kReleasedStep[] = "released";

}  // namespace

void GuestQuiescer::Step(const char* name) {
  if (journal_ == nullptr) return;
  internal::JournalStep step;
  step.set_name(name);
  if (auto s = journal_->Step(op_, step); !s.ok()) Log()->error("journal: {}", s.message());
}

absl::Status GuestQuiescer::Hold() {
  auto agent = hv_.HasGuestAgent(domain_);
  if (agent.ok() && *agent) {
    Step(kFreezeStep);  // before the freeze: a crash during it still gets a thaw
    auto frozen = hv_.FreezeFilesystems(domain_);
    if (frozen.ok()) {
      mode_ = QuiesceMode::kFreeze;
      held_ = true;
      since_ = std::chrono::steady_clock::now();
      HVAGENT_FAILPOINT("quiesce.after_hold");
      return absl::OkStatus();
    }
    (void)hv_.ThawFilesystems(domain_);  // a freeze that failed half-way must not stay
    note_ = absl::StrCat("the guest agent's freeze failed (", frozen.status().message(), "): paused instead");
    Log()->warn("domain '{}': {}", domain_, note_);
  }
  Step(kPauseStep);
  if (auto s = hv_.SuspendDomain(domain_); !s.ok()) {
    Step(kReleasedStep);
    return absl::Status(s.code(), absl::StrCat("pausing domain '", domain_, "' for the snapshot: ", s.message()));
  }
  mode_ = QuiesceMode::kPause;
  held_ = true;
  since_ = std::chrono::steady_clock::now();
  HVAGENT_FAILPOINT("quiesce.after_hold");
  return absl::OkStatus();
}

absl::Status GuestQuiescer::Release() {
  if (!held_) return absl::OkStatus();
  held_ = false;
  absl::Status s = mode_ == QuiesceMode::kFreeze ? hv_.ThawFilesystems(domain_) : hv_.ResumeDomain(domain_);
  held_ms_ = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since_).count());
  if (!s.ok()) {
    Log()->error("domain '{}': letting the guest go after the snapshot failed: {}", domain_, s.message());
    return absl::Status(s.code(), absl::StrCat(mode_ == QuiesceMode::kFreeze ? "thawing" : "resuming", " domain '",
                                               domain_, "': ", s.message()));
  }
  Step(kReleasedStep);
  Log()->info("domain '{}' was {} {} ms for a snapshot", domain_, mode_ == QuiesceMode::kFreeze ? "frozen" : "paused",
              held_ms_);
  return absl::OkStatus();
}

std::string GuestQuiescer::Recover(hv::Hypervisor& hv, const Journal::Operation& op) {
  std::string held;
  for (const auto& step : op.steps) {
    if (step.name() == kFreezeStep || step.name() == kPauseStep) held = step.name();
    if (step.name() == kReleasedStep) held.clear();
  }
  const std::string& domain = op.begin.domain();
  if (held == kFreezeStep) {
    auto s = hv.ThawFilesystems(domain);
    return s.ok() ? absl::StrCat("domain '", domain, "' thawed")
                  : absl::StrCat("thawing domain '", domain, "': ", s.message());
  }
  if (held == kPauseStep) {
    auto info = hv.GetDomain(domain);
    if (!info.ok() || info->state != hv::DomainState::kPaused) {
      return absl::StrCat("domain '", domain, "' was not left paused");
    }
    auto s = hv.ResumeDomain(domain);
    return s.ok() ? absl::StrCat("domain '", domain, "', left paused by the crash, resumed")
                  : absl::StrCat("resuming domain '", domain, "': ", s.message());
  }
  return "the guest was not held";
}

}  // namespace hvagent::service
