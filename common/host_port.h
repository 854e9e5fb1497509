#pragma once
// The host of an address written "host:port" or "[v6]:port" (listen addresses, config.cpp's
// ValidateListen; migration destinations, MigrationService), without the brackets a v6 literal
// wears there: what getaddrinfo, the socket calls and certificate checks take.

#include <string>
#include <string_view>

namespace hvagent {

inline std::string HostOf(std::string_view host_port) {
  std::string_view host = host_port.substr(0, host_port.rfind(':'));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::string(host);
}

}  // namespace hvagent
