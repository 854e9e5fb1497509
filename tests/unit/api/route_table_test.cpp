// The one API edge holds together: every proto RPC is an operation of the right types, every
// REST route points at an operation whose request has the fields the route binds, and
// docs/openapi.yaml documents exactly the routes the table has (paths, methods, operations,
// query flags).
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include <google/protobuf/descriptor.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/api/operations/operation.h"
#include "agent/api/rest/route_table.h"
#include "hvagent/v1/console.pb.h"
#include "hvagent/v1/domain.pb.h"
#include "hvagent/v1/event.pb.h"
#include "hvagent/v1/host.pb.h"
#include "hvagent/v1/image.pb.h"
#include "hvagent/v1/metrics.pb.h"
#include "hvagent/v1/migration.pb.h"
#include "hvagent/v1/operation.pb.h"
#include "hvagent/v1/storage.pb.h"

namespace hvagent::api {
namespace {

using google::protobuf::DescriptorPool;

constexpr const char* kServices[] = {"hvagent.v1.HostService", "hvagent.v1.DomainService",
                                     "hvagent.v1.EventService", "hvagent.v1.StorageService",
                                     "hvagent.v1.MetricsService", "hvagent.v1.OperationService",
                                     "hvagent.v1.ImageService", "hvagent.v1.ConsoleService",
                                     "hvagent.v1.MigrationService"};

TEST(OperationTableTest, EveryProtoMethodIsAnOperationOfItsTypes) {
  // Linking the messages in makes their files known to the generated pool.
  (void)v1::Host::default_instance();
  (void)v1::Domain::default_instance();
  (void)v1::DomainEvent::default_instance();
  (void)v1::Volume::default_instance();
  (void)v1::MetricsSample::default_instance();
  (void)v1::Operation::default_instance();
  (void)v1::Image::default_instance();
  (void)v1::ConsoleInput::default_instance();
  (void)v1::MigrateDomainRequest::default_instance();
  size_t methods = 0;
  for (const char* name : kServices) {
    const auto* service = DescriptorPool::generated_pool()->FindServiceByName(name);
    ASSERT_NE(service, nullptr) << name;
    for (int i = 0; i < service->method_count(); ++i) {
      const auto* m = service->method(i);
      const std::string full = std::string(name) + "/" + m->name();
      SCOPED_TRACE(full);
      const ops::Operation* op = ops::Find(full);
      ASSERT_NE(op, nullptr) << "no row in operation_table.cpp";
      ASSERT_NE(op->request, nullptr);
      if (op->kind == ops::Kind::kUpload) {
        // A client stream of a header, then bytes: the row's request is the header.
        EXPECT_TRUE(m->client_streaming());
        EXPECT_FALSE(m->server_streaming());
        const auto* header = m->input_type()->FindFieldByName("header");
        ASSERT_NE(header, nullptr);
        EXPECT_EQ(op->request->GetDescriptor(), header->message_type());
        ASSERT_NE(op->response, nullptr);
        EXPECT_EQ(op->response->GetDescriptor(), m->output_type());
        EXPECT_NE(op->upload, nullptr);
        EXPECT_TRUE(op->mutating);
        ++methods;
        continue;
      }
      EXPECT_EQ(op->request->GetDescriptor(), m->input_type());
      if (m->server_streaming() || m->client_streaming()) {
        EXPECT_EQ(op->kind, ops::Kind::kStream);
      } else {
        EXPECT_EQ(op->kind, ops::Kind::kUnary);
        ASSERT_NE(op->response, nullptr);
        EXPECT_EQ(op->response->GetDescriptor(), m->output_type());
        EXPECT_NE(op->handler, nullptr);
      }
      ++methods;
    }
  }
  // Every row is a proto method, but for the Prometheus page.
  EXPECT_EQ(ops::All().size(), methods + 1);
}

TEST(OperationTableTest, ReadsAreNeverMutatingAndControllersOwnCreation) {
  for (const ops::Operation& op : ops::All()) {
    SCOPED_TRACE(std::string(op.name));
    const std::string method(op.name.substr(op.name.find('/') + 1));
    // KeepIncoming, a live migration's heartbeat, only touches a transfer's idle clock: neither
    // audited once a second nor refused when changing operations fill the gate (a refusal
    // would count as a miss and abort a healthy move).
    if (method.rfind("Get", 0) == 0 || method.rfind("List", 0) == 0 || method == "Watch" ||
        method == "KeepIncoming") {
      EXPECT_FALSE(op.mutating);
    } else if (op.kind == ops::Kind::kUnary) {
      EXPECT_TRUE(op.mutating);
    }
    if (method.rfind("Create", 0) == 0 || method.rfind("Delete", 0) == 0) {
      EXPECT_EQ(op.role, auth::Role::kController);
    }
  }
}

TEST(RouteTableTest, EveryRouteBindsFieldsOfItsOperationsRequest) {
  std::set<std::string> served;
  for (const Route& r : Routes()) {
    SCOPED_TRACE(std::string(r.method) + " " + std::string(r.pattern));
    if (r.operation.empty()) {
      EXPECT_EQ(r.pattern, "/healthz");
      continue;
    }
    const ops::Operation* op = ops::Find(r.operation);
    ASSERT_NE(op, nullptr);
    if (op->kind == ops::Kind::kStream) {
      // The one stream REST serves: an export's bytes as a streamed body (export_resource.cpp).
      EXPECT_EQ(op->name, "hvagent.v1.StorageService/ExportVolume") << "streams are gRPC only";
      EXPECT_EQ(r.method, "GET");
    }
    served.insert(std::string(op->name));
    if (op->request == nullptr) continue;
    const auto* desc = op->request->GetDescriptor();
    std::string pattern(r.pattern);
    std::regex param(R"(\{(\w+)(=(\w+))?\})");
    for (auto it = std::sregex_iterator(pattern.begin(), pattern.end(), param); it != std::sregex_iterator(); ++it) {
      std::string field = (*it)[3].matched ? (*it)[3].str() : (*it)[1].str();
      EXPECT_NE(desc->FindFieldByName(field), nullptr) << field;
    }
    for (absl::string_view q : r.query) {
      const auto* field = desc->FindFieldByName(std::string(q));
      ASSERT_NE(field, nullptr) << q;
      // A type the binder cannot set would answer 500 to every caller who used the parameter.
      EXPECT_TRUE(QueryTypeSupported(*field)) << r.pattern << " ?" << q;
    }
  }
  // REST serves every operation but the streams and the peer's (agent to agent, gRPC only:
  // its transfers are streams).
  for (const ops::Operation& op : ops::All()) {
    if (op.kind != ops::Kind::kStream && op.role != auth::Role::kPeer) {
      EXPECT_TRUE(served.contains(std::string(op.name))) << op.name;
    }
  }
}

TEST(RouteTableTest, MatchingBindsParametersAndKnowsMethodsAndVerbs) {
  RouteMatch m = MatchRoute("POST", "/v1/pools/vg0/volumes/data:attach");
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.route->operation, "hvagent.v1.StorageService/AttachVolume");
  EXPECT_EQ(m.params, (std::map<std::string, std::string>{{"pool", "vg0"}, {"name", "data"}}));
  m = MatchRoute("GET", "/v1/pools/vg0");
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.params, (std::map<std::string, std::string>{{"name", "vg0"}}));
  m = MatchRoute("PUT", "/v1/domains/web1");
  EXPECT_EQ(m.route, nullptr);
  EXPECT_THAT(m.allowed, ::testing::ElementsAre("GET", "DELETE"));
  m = MatchRoute("POST", "/v1/domains/web1:explode");
  EXPECT_EQ(m.route, nullptr);
  EXPECT_TRUE(m.allowed.empty());
  EXPECT_THAT(m.verbs, ::testing::Contains("start"));
  for (const char* path : {"/v1/domains/", "/v1/pools//volumes", "/v1/domains/a/b", "v1/domains", ""}) {
    SCOPED_TRACE(path);
    m = MatchRoute("GET", path);
    EXPECT_EQ(m.route, nullptr);
    EXPECT_TRUE(m.allowed.empty());
  }
}

// docs/openapi.yaml, read line by line (it is this project's own file, in one layout):
// "  /path:" opens a path, "    get:" a method, "x-hvagent-operation: X" names its operation,
// "{name: flag, in: query" a query flag.
struct DocRoute {
  std::string method, path, operation;
  std::set<std::string> query;
  auto operator<=>(const DocRoute&) const = default;
};

std::vector<DocRoute> ReadOpenApi() {
  std::ifstream in(HVAGENT_SOURCE_DIR "/docs/openapi.yaml");
  EXPECT_TRUE(in.good());
  std::vector<DocRoute> out;
  std::string line, path;
  bool in_paths = false;
  const std::regex path_re(R"(^  (/\S*):\s*$)"), method_re(R"(^    (get|put|post|delete|patch|head|options):\s*$)"),
      op_re(R"(^\s+x-hvagent-operation:\s*(\S+))"), query_re(R"(\{name:\s*(\w+),\s*in:\s*query)");
  while (std::getline(in, line)) {
    if (line == "paths:") in_paths = true;
    if (!line.empty() && line[0] != ' ' && line != "paths:") in_paths = false;
    if (!in_paths) continue;
    std::smatch m;
    if (std::regex_match(line, m, path_re)) {
      path = m[1];
    } else if (std::regex_match(line, m, method_re)) {
      std::string method = m[1];
      for (char& c : method) c = static_cast<char>(std::toupper(c));
      out.push_back({method, path, "", {}});
    } else if (std::regex_search(line, m, op_re) && !out.empty()) {
      out.back().operation = m[1];
    } else if (std::regex_search(line, m, query_re) && !out.empty()) {
      out.back().query.insert(m[1]);
    }
  }
  return out;
}

TEST(RouteTableTest, QueryParametersOfEveryTypeBindOrNameTheParameter) {
  // Rows use bool, uint32 and strings today; the binder takes every singular scalar so that the
  // next row's uint64 or enum parameter is not a 500.
  v1::ConsoleLog log;  // uint64 size_bytes
  v1::ConsoleTicket ticket;  // enum kind
  const Route log_route{"GET", "/v1/x", "", 200, {"size_bytes"}};
  ASSERT_TRUE(BindRequest(log_route, {}, HttpRequest{"GET", "/v1/x", {{"size_bytes", "18446744073709551615"}}, "", "",
                                                     std::nullopt},
                          &log)
                  .ok());
  EXPECT_EQ(log.size_bytes(), 18446744073709551615ULL);
  auto too_big = BindRequest(log_route, {}, HttpRequest{"GET", "/v1/x", {{"size_bytes", "18446744073709551616"}}, "", "",
                                                        std::nullopt},
                             &log);
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_big.message()), ::testing::HasSubstr("size_bytes: must be a whole number"));

  const Route kind_route{"GET", "/v1/x", "", 200, {"kind"}};
  ASSERT_TRUE(BindRequest(kind_route, {}, HttpRequest{"GET", "/v1/x", {{"kind", "CONSOLE_KIND_SERIAL_TCP"}}, "", "",
                                                      std::nullopt},
                          &ticket)
                  .ok());
  EXPECT_EQ(ticket.kind(), v1::CONSOLE_KIND_SERIAL_TCP);
  auto bad_kind = BindRequest(kind_route, {}, HttpRequest{"GET", "/v1/x", {{"kind", "vnc"}}, "", "", std::nullopt},
                              &ticket);
  EXPECT_EQ(bad_kind.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_kind.message()), ::testing::HasSubstr("kind: not a ConsoleKind value"));
}

TEST(RouteTableTest, OpenApiDocumentsExactlyTheRouteTable) {
  std::vector<DocRoute> table;
  for (const Route& r : Routes()) {
    std::string path = std::regex_replace(std::string(r.pattern), std::regex(R"(\{(\w+)=\w+\})"), "{$1}");
    table.push_back({std::string(r.method), path, std::string(r.operation),
                     std::set<std::string>(r.query.begin(), r.query.end())});
  }
  std::vector<DocRoute> doc = ReadOpenApi();
  ASSERT_GE(doc.size(), 20u) << "the reader found too little in docs/openapi.yaml";
  std::sort(table.begin(), table.end());
  std::sort(doc.begin(), doc.end());
  auto show = [](const std::vector<DocRoute>& v) {
    std::ostringstream os;
    for (const auto& r : v) {
      os << "\n  " << r.method << " " << r.path << " -> " << r.operation;
      for (const auto& q : r.query) os << " ?" << q;
    }
    return os.str();
  };
  std::vector<DocRoute> only_table, only_doc;
  std::set_difference(table.begin(), table.end(), doc.begin(), doc.end(), std::back_inserter(only_table));
  std::set_difference(doc.begin(), doc.end(), table.begin(), table.end(), std::back_inserter(only_doc));
  EXPECT_TRUE(only_table.empty()) << "routes docs/openapi.yaml lacks:" << show(only_table);
  EXPECT_TRUE(only_doc.empty()) << "documented routes the table lacks:" << show(only_doc);
}

}  // namespace
}  // namespace hvagent::api
