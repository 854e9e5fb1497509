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

namespace hvagent::failpoint {

// True when this binary was built with failpoints (hvagentd --version says so).
bool CompiledIn();

// Kills the process with SIGKILL (or sleeps) if `name` is armed. Only called through the macro.
void Hit(const char* name);

}  // namespace hvagent::failpoint

#ifdef HVAGENT_FAILPOINTS_ENABLED
#define HVAGENT_FAILPOINT(name) ::hvagent::failpoint::Hit(name)
#else
#define HVAGENT_FAILPOINT(name) \
  do {                          \
  } while (0)
#endif
