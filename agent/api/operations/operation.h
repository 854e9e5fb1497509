#pragma once
// Operations: every call the agent serves, whichever API it arrives by, is one row of one table
// (operation_table.cpp): its name (the gRPC method, "hvagent.v1.DomainService/StartDomain"), the
// role it needs, whether it changes anything, its request and response messages and the handler
// that turns the request into agent/service calls. gRPC services and REST routes only find the
// row and hand it a request; Pipeline (pipeline.h) does everything else the same way for both.
//
// Streams (EventService/Watch, MetricsService/Watch, ConsoleService/Attach) and the Prometheus page are rows too, so
// that authorization reads one table, but they have no unary handler: their transport serves them.

#include "absl/strings/string_view.h"

#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "agent/api/auth/authorizer.h"
#include "agent/service/console_access.h"
#include "agent/service/console_sessions.h"
#include "agent/service/domain_service.h"
#include "agent/service/host_service.h"
#include "agent/service/image_service.h"
#include "agent/service/incoming_migrations.h"
#include "agent/service/journal.h"
#include "agent/service/metrics_collector.h"
#include "agent/service/migration_service.h"
#include "agent/service/storage_service.h"

namespace hvagent::api::ops {

using Message = google::protobuf::Message;

// What handlers call. A null member is a subsystem this agent runs without (no pools, no
// metrics collector in some unit tests): its operations are then absent (gRPC UNIMPLEMENTED,
// REST 404), never a crash.
struct Services {
  service::HostService* host = nullptr;
  service::DomainService* domains = nullptr;
  service::StorageService* storage = nullptr;
  service::MetricsCollector* metrics = nullptr;
  const service::Journal* journal = nullptr;
  service::ImageService* images = nullptr;
  service::ConsoleSessions* consoles = nullptr;
  service::ConsoleAccess* console_access = nullptr;
  service::MigrationService* migrations = nullptr;  // the source side
  service::IncomingMigrations* incoming = nullptr;  // the destination side
};

enum class Needs {
  kHost, kDomains, kStorage, kMetrics, kJournal, kImages, kConsoles, kConsoleAccess, kMigrations, kIncoming
};

using Handler = absl::Status (*)(const Services&, const Message& request, Message* response);
// An upload: a header message, then the body the transport reads as the handler pulls it.
using UploadHandler = absl::Status (*)(const Services&, const Message& header, service::UploadBody& body,
                                       Message* response);

enum class Kind {
  kUnary,   // request in, response out: Pipeline::Run
  kStream,  // served by the transport after Pipeline::AdmitStream
  kPage,    // REST only, not a proto message (GET /metrics): Pipeline::Admit, then the route renders
  kUpload,  // a header, then a stream of bytes from the caller: Pipeline::RunUpload
};

struct Operation {
  absl::string_view name;  // the gRPC full method name
  auth::Role role;        // the least role that may call it
  bool mutating;          // changes something: gated, idempotent under a key, audited
  Kind kind;
  Needs needs;
  const Message* request = nullptr;   // prototype (default instance); null for pages
  const Message* response = nullptr;  // prototype; null for streams and pages
  Handler handler = nullptr;          // kUnary only
  UploadHandler upload = nullptr;     // kUpload only (request is the header's prototype)
  // The reply carries a secret (a console ticket, a VNC password): it is never stored for an
  // idempotency key, which would keep it on disk and hand it out again on a replay, so a call
  // that sends a key is refused (INVALID_ARGUMENT naming idempotency-key) before it runs.
  bool secret_reply = false;
};

// Every operation, in the order of proto/hvagent/v1/*.proto.
absl::Span<const Operation> All();
// nullptr when `name` is no operation (which authorization refuses to everybody).
const Operation* Find(absl::string_view name);
// Whether `services` has what `op` needs.
bool Available(const Operation& op, const Services& services);

}  // namespace hvagent::api::ops
