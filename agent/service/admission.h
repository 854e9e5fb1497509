#pragma once
// Admission control: the capacity policy HostService reports (host_service.h) is also enforced.
// DomainService asks before it defines or starts a domain; StorageService checks a pool's
// free-space floor before it creates or grows a volume. A refusal is RESOURCE_EXHAUSTED with a
// payload saying which kind of capacity ran out (CapacityKindOf), so the REST edge answers 409
// for CPU/memory and 507 for storage without reading the message, and never confuses either with
// a caller's rate limit (429).
// Concurrency: an admission counts what the hypervisor lists plus every hold still in flight,
// under one lock, so two creates cannot both take the last slot; a hold is released when the
// caller's hypervisor call is over (then the domain itself is listed) or failed.

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/service/host_service.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

enum class CapacityKind { kCompute, kStorage };

// RESOURCE_EXHAUSTED carrying `kind`; the message should give asked, available and limit.
absl::Status CapacityExhausted(CapacityKind kind, absl::string_view message);
// The kind a status was made with by CapacityExhausted; nullopt for any other status.
std::optional<CapacityKind> CapacityKindOf(const absl::Status& s);
// "compute" / "storage": the `details` of the REST error body.
const char* CapacityKindName(CapacityKind kind);

class ComputeAdmission {
 private:
  struct Claim {
    std::string name;  // the domain; once the hypervisor lists it as claimed, the hold stops counting
    uint32_t vcpus = 0;
    uint64_t memory_bytes = 0;
    bool defines = false;  // a new definition (counts against "defined")
    bool runs = false;     // a domain about to run (counts against "running")
    // A resize of a listed domain: only the growth is held, and it counts until the hypervisor
    // lists the domain at the size it grows to (or the hold is released).
    bool growth = false;
    uint32_t to_vcpus = 0;       // growth: the size the domain grows to
    uint64_t to_memory_mib = 0;
  };

 public:
  // Holds capacity until destroyed (move-only).
  class Hold {
   public:
    Hold() = default;
    Hold(Hold&& o) noexcept : owner_(o.owner_), it_(o.it_) { o.owner_ = nullptr; }
    Hold& operator=(Hold&& o) noexcept;
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() { Release(); }
    void Release();

   private:
    friend class ComputeAdmission;
    Hold(ComputeAdmission* owner, std::list<Claim>::iterator it) : owner_(owner), it_(it) {}
    ComputeAdmission* owner_ = nullptr;
    std::list<Claim>::iterator it_;
  };

  ComputeAdmission(hv::Hypervisor& hypervisor, CapacityPolicy policy) : hv_(hypervisor), policy_(policy) {}

  // A new domain of `vcpus` and `memory_mib`: every defined domain plus the holds of creates in
  // flight plus this one must fit the schedulable figures. With `start` the hold also counts as
  // running, for concurrent starts.
  absl::StatusOr<Hold> AdmitCreate(const std::string& name, uint32_t vcpus, uint64_t memory_mib, bool start);
  // Starting the defined domain `name`: the running domains plus the holds of starts in flight
  // plus this one must fit. A domain defined behind the agent's back (or before a policy
  // change) is admitted here, at start. A domain that is unknown or already active is not
  // checked: the hypervisor answers NotFound / FailedPrecondition as before.
  absl::StatusOr<Hold> AdmitStart(const std::string& name);

  // Growing the listed domain `name` by `vcpus` and `memory_mib` (UpdateDomain): the defined
  // domains plus the holds in flight plus the growth must fit, and so must the running ones when
  // `running`. Zero growth is not checked.
  absl::StatusOr<Hold> AdmitGrowth(const std::string& name, uint32_t vcpus, uint64_t memory_mib, bool running);

  const CapacityPolicy& policy() const { return policy_; }

 private:
  // The capacity figures and the listing they were computed from, read once per admission.
  absl::StatusOr<std::pair<Capacity, std::vector<hv::DomainInfo>>> ReadHost();
  absl::Status Check(const Capacity& c, const std::vector<hv::DomainInfo>& domains, uint32_t vcpus,
                     uint64_t memory_bytes, bool running, absl::string_view what);

  hv::Hypervisor& hv_;
  const CapacityPolicy policy_;
  std::mutex mu_;
  std::list<Claim> holds_;  // guarded by mu_
};

// The storage half: a pool may not go below `floor_bytes` of free space by a create or a grow.
// Called with the pool's own lock held (StorageService), which already serialises every change
// to that pool, so no hold is needed.
absl::Status CheckPoolFloor(const std::string& pool, uint64_t free_bytes, uint64_t asked_bytes, uint64_t floor_bytes,
                            absl::string_view field);

}  // namespace hvagent::service
