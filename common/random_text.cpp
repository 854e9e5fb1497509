#include "common/random_text.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace hvagent {

absl::StatusOr<std::string> RandomAlphanumeric(size_t length) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  constexpr unsigned kLetters = sizeof kAlphabet - 1;  // 62
  constexpr unsigned kBelow = 256 - 256 % kLetters;    // 248: bytes from here up are drawn again
  std::string out;
  out.reserve(length);
  while (out.size() < length) {
    unsigned char raw[16];
    if (getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw)) {
      return absl::InternalError(absl::StrCat("the random generator failed: ", std::strerror(errno)));
    }
    for (unsigned char c : raw) {
      if (c < kBelow && out.size() < length) out += kAlphabet[c % kLetters];
    }
    explicit_bzero(raw, sizeof raw);
  }
  return out;
}

}  // namespace hvagent
