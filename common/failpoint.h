#pragma once
// Failpoints: named places between the steps of a multi-step operation where a test build of
// the agent kills itself with SIGKILL, as a crash or the OOM killer would, so that the tests can
// prove recovery leaves nothing half-done (docs/reliability.md).
//
// Compiled in only with -DHVAGENT_FAILPOINTS=ON (deploy/test.sh); in any other build
// HVAGENT_FAILPOINT(name) is an empty statement. Armed through the environment:
//   HVAGENT_FAILPOINTS=create.after_define,delete.after_undefine   (SIGKILL there)
//   HVAGENT_FAILPOINTS=create.after_define=sleep:4000              (pause there 4 s, e.g. to stop
//                                                                   libvirtd mid-operation)
//   HVAGENT_FAILPOINTS=detach.guest_keeps_disk=fail                (HVAGENT_FAILPOINT_FAILS(name)
//                                                                   is true there: the code takes
//                                                                   its failure path, as when the
//                                                                   outside world says no)

#include "common/failpoint_build.h"

namespace hvagent::failpoint {

// True when this binary was built with failpoints (hvagentd --version says so).
bool CompiledIn();

// Kills the process with SIGKILL (or sleeps) if `name` is armed. Only called through the macro.
void Hit(const char* name);

// True if `name` is armed as `name=fail`. Only called through HVAGENT_FAILPOINT_FAILS.
bool Fails(const char* name);

}  // namespace hvagent::failpoint

#if HVAGENT_FAILPOINTS_ENABLED
#define HVAGENT_FAILPOINT(name) ::hvagent::failpoint::Hit(name)
#define HVAGENT_FAILPOINT_FAILS(name) ::hvagent::failpoint::Fails(name)
#else
#define HVAGENT_FAILPOINT(name) \
  do {                          \
  } while (0)
#define HVAGENT_FAILPOINT_FAILS(name) false
#endif
