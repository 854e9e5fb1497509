#pragma once
// Random text from the kernel's CSPRNG (getrandom): letters and digits only, every character
// equally likely. For secrets a person or a protocol types as text, such as VNC passwords.

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace hvagent {

// `length` characters of [A-Za-z0-9] (about 5.95 bits each). Internal when the kernel's
// generator fails.
absl::StatusOr<std::string> RandomAlphanumeric(size_t length);

}  // namespace hvagent
