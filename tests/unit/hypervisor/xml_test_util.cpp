#include "tests/unit/hypervisor/xml_test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "storage/exec/subprocess_runner.h"

namespace hvagent::hv {

absl::Status ValidateWithLibvirtSchema(const std::string& xml) {
  constexpr char kValidator[] = "/usr/bin/virt-xml-validate";
  if (access(kValidator, X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(kValidator, " is missing (package libvirt-clients)"));
  }
  char path[] = "/tmp/hvagent-domain-XXXXXX.xml";
  int fd = mkstemps(path, 4);
  if (fd < 0) return absl::InternalError("mkstemps failed");
  close(fd);
  { std::ofstream(path) << xml; }
  storage::SubprocessRunner runner;
  auto r = runner.Run({.argv = {kValidator, path, "domain"}, .timeout = std::chrono::seconds(30)});
  unlink(path);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InvalidArgumentError(absl::StrCat("virt-xml-validate: ", r->stderr_text, r->stdout_text, "\n", xml));
  }
  return absl::OkStatus();
}

}  // namespace hvagent::hv
