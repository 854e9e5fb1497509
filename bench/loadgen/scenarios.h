#pragma once
// The benchmark's scenarios (issue 9). Each adds one section to the Report and answers an
// error only when it could not run. FailedPrecondition means this machine lacks what the
// scenario needs (libvirtd, a user to run it as): the run reports it as skipped, not failed;
// storage, which needs root and lvm2, says so in a note and succeeds.

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <string>

#include "absl/status/status.h"
#include "bench/loadgen/report.h"

namespace hvagent::bench {

struct Settings {
  bool smoke = false;         // tiny counts: proves the scenarios run, measures nothing
  std::string hvagentd;       // the agent binary the scenarios start
  std::string metrics_bench;  // the in-process /metrics benchmark (scale reuses it)
  std::string agent_log_level = "info";
  // An agent that is already running (overhead and throughput only): gRPC address, REST port
  // and the libvirt URI it uses (for the direct baseline). Empty: start our own.
  std::string grpc_address;
  int rest_port = 0;
  std::string direct_uri;
};

absl::Status RunOverhead(const Settings& s, Report& report);
absl::Status RunThroughput(const Settings& s, Report& report);
absl::Status RunScale(const Settings& s, Report& report);
absl::Status RunFootprint(const Settings& s, Report& report);
absl::Status RunEvents(const Settings& s, Report& report);
absl::Status RunStorage(const Settings& s, Report& report);

// Shared by the scenarios: defines and starts `count` small domains named <prefix><i> on a
// libvirt connection (test driver XML).
absl::Status DefineTestDomains(virConnectPtr conn, const std::string& prefix, int count);

}  // namespace hvagent::bench
