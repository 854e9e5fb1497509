#pragma once
// The Prometheus text exposition format (version 0.0.4) for one MetricsSample: what GET /metrics
// serves. Every family gets its # HELP and # TYPE once, its samples together; label values are
// escaped as the format requires (backslash, double quote, newline). Names follow Prometheus'
// conventions: the hvagent_ prefix, base units (bytes, seconds), _total on counters. A figure
// the agent could not read is left out (never reported as 0). docs/metrics.md lists them all.

#include <string>

#include "agent/service/metrics_collector.h"

namespace hvagent::api {

inline constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

std::string RenderPrometheus(const service::MetricsSample& sample);

}  // namespace hvagent::api
