#pragma once
// Test data: bytes that look random (no zero runs for an export to skip, no pattern a bug could
// line up with) yet are the same in every run, and a file read back whole.

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>

namespace hvagent::testing {

// `n` bytes from a linear congruential generator started at `seed`.
inline std::string PseudoRandomBytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    out[i] = static_cast<char>(seed >> 16);
  }
  return out;
}

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace hvagent::testing
