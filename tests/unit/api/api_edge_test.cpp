// One edge for both APIs: a request retried with the same Idempotency-Key over the other API is
// recognised and answered with the first answer, running once; the operations list is the same
// whichever API asks for it.
#include <grpcpp/create_channel.h>
#include <grpcpp/server_builder.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/api/grpc/grpc_services.h"
#include "common/worker_pool.h"
#include "agent/api/rest/rest_router.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;

class ApiEdgeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    b.RegisterService(&domain_svc_).RegisterService(&operation_svc_);
    server_ = b.BuildAndStart();
    auto channel = server_->InProcessChannel({});
    domains_stub_ = v1::DomainService::NewStub(channel);
    operations_stub_ = v1::OperationService::NewStub(channel);
  }
  void TearDown() override { server_->Shutdown(); }

  static v1::CreateDomainRequest CreateRequest(const std::string& name) {
    v1::CreateDomainRequest req;
    req.mutable_spec()->set_name(name);
    req.mutable_spec()->set_vcpus(1);
    req.mutable_spec()->set_memory_mib(64);
    req.set_start(true);
    return req;
  }
  static std::string CreateJson(const std::string& name) {
    return R"({"spec":{"name":")" + name + R"(","vcpus":1,"memory_mib":64},"start":true})";
  }
  grpc::Status GrpcCreate(const v1::CreateDomainRequest& req, const std::string& key, v1::Domain* out,
                          bool* replayed) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("idempotency-key", key);
    grpc::Status s = domains_stub_->CreateDomain(&ctx, req, out);
    auto md = ctx.GetServerInitialMetadata();
    *replayed = md.find("idempotent-replay") != md.end();
    return s;
  }
  HttpResponse RestCreate(const std::string& body, const std::string& key) {
    HttpRequest req{"POST", "/v1/domains", {}, body};
    req.idempotency_key = key;
    return router_.Handle(req);
  }
  size_t CreatesRun() {
    size_t n = 0;
    for (const auto& e : journal_->Recent()) n += e.op.begin.type() == v1::OPERATION_KIND_CREATE_DOMAIN;
    return n;
  }

  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  std::unique_ptr<service::Journal> journal_ = std::move(*service::Journal::Open(""));
  std::unique_ptr<service::IdempotencyStore> idem_ = std::move(*service::IdempotencyStore::Open("", {}));
  service::DomainService domains_{hv_, clock_, {}, nullptr, journal_.get()};
  service::HostService host_{hv_};
  ops::Pipeline pipeline_{{.host = &host_, .domains = &domains_, .journal = journal_.get()}, {.idem = idem_.get()}};
  WorkerPool workers_{8};  // before the services: it outlives them
  DomainGrpcService domain_svc_{pipeline_, workers_};
  OperationGrpcService operation_svc_{pipeline_, workers_};
  RestRouter router_{pipeline_};
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::DomainService::Stub> domains_stub_;
  std::unique_ptr<v1::OperationService::Stub> operations_stub_;
};

TEST_F(ApiEdgeTest, SameKeyOverGrpcThenRestRunsOnceAndReplaysTheFirstAnswer) {
  v1::Domain first;
  bool replayed = true;
  ASSERT_TRUE(GrpcCreate(CreateRequest("web1"), "key-1", &first, &replayed).ok());
  EXPECT_FALSE(replayed);
  HttpResponse again = RestCreate(CreateJson("web1"), "key-1");
  EXPECT_EQ(again.status, 201) << again.body;
  EXPECT_EQ(again.headers["Idempotent-Replay"], "true");
  EXPECT_THAT(again.body, HasSubstr(first.uuid()));
  EXPECT_EQ(hv_.domain_count(), 1u);
  EXPECT_EQ(CreatesRun(), 1u);
}

TEST_F(ApiEdgeTest, SameKeyOverRestThenGrpcRunsOnceAndReplaysTheFirstAnswer) {
  HttpResponse first = RestCreate(CreateJson("web2"), "key-2");
  ASSERT_EQ(first.status, 201) << first.body;
  EXPECT_EQ(first.headers.count("Idempotent-Replay"), 0u);
  v1::Domain again;
  bool replayed = false;
  ASSERT_TRUE(GrpcCreate(CreateRequest("web2"), "key-2", &again, &replayed).ok());
  EXPECT_TRUE(replayed);
  EXPECT_FALSE(again.uuid().empty());
  EXPECT_THAT(first.body, HasSubstr(again.uuid()));
  EXPECT_EQ(hv_.domain_count(), 1u);
  EXPECT_EQ(CreatesRun(), 1u);
}

TEST_F(ApiEdgeTest, SameKeyForAnotherRequestIsRefusedOverEitherApi) {
  HttpResponse first = RestCreate(CreateJson("web3"), "key-3");
  ASSERT_EQ(first.status, 201);
  v1::Domain d;
  bool replayed = false;
  grpc::Status s = GrpcCreate(CreateRequest("web4"), "key-3", &d, &replayed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("key-3"));
  EXPECT_EQ(RestCreate(CreateJson("web5"), "key-3").status, 409);
  EXPECT_EQ(hv_.domain_count(), 1u);
}

int secret_runs = 0;
absl::Status IssueSecret(const ops::Services&, const google::protobuf::Message&, google::protobuf::Message* out) {
  ++secret_runs;
  static_cast<v1::Domain*>(out)->set_name("secret-" + std::to_string(secret_runs));
  return absl::OkStatus();
}

// A reply holding a secret (console tickets, VNC passwords) is never kept for an idempotency
// key: a call with a key is refused before it runs, one without runs every time.
TEST_F(ApiEdgeTest, AnOperationWithASecretReplyRefusesAnIdempotencyKeyAndStoresNothing) {
  const ops::Operation* ticket = ops::Find("hvagent.v1.ConsoleService/IssueConsoleTicket");
  ASSERT_NE(ticket, nullptr);
  EXPECT_TRUE(ticket->secret_reply);
  for (const ops::Operation& op : ops::All()) {
    if (op.name != ticket->name) {
      EXPECT_FALSE(op.secret_reply) << op.name;
    }
  }
  ops::Operation secret{"hvagent.test/IssueSecret", auth::Role::kOperator, true, ops::Kind::kUnary,
                        ops::Needs::kDomains, &v1::DomainRef::default_instance(), &v1::Domain::default_instance(),
                        &IssueSecret};
  secret.secret_reply = true;
  secret_runs = 0;
  ops::Pipeline::Call keyed{auth::Caller{"-", auth::Role::kController}, std::string("key-s")};
  v1::Domain out;
  absl::Status s = pipeline_.Run(secret, keyed, v1::DomainRef(), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("idempotency-key"));
  EXPECT_EQ(secret_runs, 0);
  for (int i = 1; i <= 2; ++i) {
    ops::Pipeline::Call plain{auth::Caller{"-", auth::Role::kController}, std::nullopt};
    ASSERT_TRUE(pipeline_.Run(secret, plain, v1::DomainRef(), &out).ok());
    EXPECT_EQ(out.name(), "secret-" + std::to_string(i));
    EXPECT_FALSE(plain.replayed);
  }
}

TEST_F(ApiEdgeTest, ListOperationsIsTheSameOverBothApis) {
  ASSERT_EQ(RestCreate(CreateJson("web6"), "key-6").status, 201);
  ASSERT_TRUE(domains_.Delete("web6", /*force=*/true).ok());
  grpc::ClientContext ctx;
  v1::ListOperationsResponse list;
  ASSERT_TRUE(operations_stub_->ListOperations(&ctx, {}, &list).ok());
  ASSERT_EQ(list.operations_size(), 2);
  EXPECT_EQ(list.operations(0).kind(), v1::OPERATION_KIND_DELETE_DOMAIN);  // newest first
  EXPECT_EQ(list.operations(1).kind(), v1::OPERATION_KIND_CREATE_DOMAIN);
  EXPECT_EQ(list.operations(1).state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(list.operations(1).domain(), "web6");
  EXPECT_THAT(list.operations(1).steps(), ::testing::ElementsAre("define", "start"));
  HttpResponse rest = router_.Handle({"GET", "/v1/operations", {}, ""});
  ASSERT_EQ(rest.status, 200);
  EXPECT_THAT(rest.body, HasSubstr(R"("kind":"OPERATION_KIND_DELETE_DOMAIN")"));
  EXPECT_THAT(rest.body, HasSubstr(R"("state":"OPERATION_STATE_SUCCEEDED")"));
  rest = router_.Handle({"GET", "/v1/operations", {{"running_only", "true"}}, ""});
  EXPECT_EQ(rest.status, 200);
  EXPECT_EQ(rest.body, R"({"operations":[]})");
  EXPECT_EQ(router_.Handle({"GET", "/v1/operations", {{"running_only", "maybe"}}, ""}).status, 400);
  EXPECT_EQ(router_.Handle({"GET", "/v1/operations", {{"limit", "3"}}, ""}).status, 400);
}

}  // namespace
}  // namespace hvagent::api
