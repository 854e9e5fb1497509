#pragma once
// The agent's version, from CMake's project(VERSION ...).
#ifndef HVAGENT_VERSION
#define HVAGENT_VERSION "0.0.0-dev"
#endif
namespace hvagent {
inline constexpr const char* kAgentVersion = HVAGENT_VERSION;
}
