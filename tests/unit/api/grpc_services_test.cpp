// The gRPC services in-process, over the real service layer and a fake hypervisor.
#include "agent/api/grpc/grpc_services.h"
#include "agent/service/operation_events.h"
#include "common/worker_pool.h"

#include <filesystem>
#include <map>
#include <thread>

#include <grpcpp/create_channel.h>
#include <grpcpp/server_builder.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;

class GrpcServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hv_.SetEventSink([this](const hv::DomainEvent& e) { hub_.Publish(e); });
    grpc::ServerBuilder b;
    b.RegisterService(&host_svc_).RegisterService(&domain_svc_).RegisterService(&event_svc_);
    server_ = b.BuildAndStart();
    auto channel = server_->InProcessChannel({});
    host_ = v1::HostService::NewStub(channel);
    domains_stub_ = v1::DomainService::NewStub(channel);
    events_ = v1::EventService::NewStub(channel);
  }
  void TearDown() override {
    hub_.Close();
    server_->Shutdown();
  }

  grpc::Status Create(const std::string& name, uint32_t vcpus, uint64_t mib, bool start, v1::Domain* out) {
    grpc::ClientContext ctx;
    v1::CreateDomainRequest req;
    req.mutable_spec()->set_name(name);
    req.mutable_spec()->set_vcpus(vcpus);
    req.mutable_spec()->set_memory_mib(mib);
    req.set_start(start);
    return domains_stub_->CreateDomain(&ctx, req, out);
  }

  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  service::EventHub hub_;
  service::DomainService domains_{hv_, clock_, {}};
  service::HostService hostsvc_{hv_};
  ops::Pipeline pipeline_{{.host = &hostsvc_, .domains = &domains_}, {}};
  WorkerPool workers_{8};  // before the services: it outlives them
  HostGrpcService host_svc_{pipeline_, workers_};
  DomainGrpcService domain_svc_{pipeline_, workers_};
  EventGrpcService event_svc_{hub_, pipeline_};
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::HostService::Stub> host_;
  std::unique_ptr<v1::DomainService::Stub> domains_stub_;
  std::unique_ptr<v1::EventService::Stub> events_;
};

TEST_F(GrpcServicesTest, GetHostAndCapacity) {
  grpc::ClientContext ctx;
  v1::Host h;
  ASSERT_TRUE(host_->GetHost(&ctx, {}, &h).ok());
  EXPECT_EQ(h.arch(), "aarch64");
  EXPECT_EQ(h.cpus(), 8u);
  EXPECT_TRUE(h.connected());
  EXPECT_FALSE(h.agent_version().empty());
  v1::Domain d;
  ASSERT_TRUE(Create("web1", 3, 128, true, &d).ok());
  grpc::ClientContext ctx2;
  v1::Capacity c;
  ASSERT_TRUE(host_->GetCapacity(&ctx2, {}, &c).ok());
  EXPECT_EQ(c.allocated_vcpus(), 3u);
  EXPECT_EQ(c.domains_running(), 1u);
}

TEST_F(GrpcServicesTest, CreateReturnsDomainAndEchoesRequestId) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-request-id", "req-42");
  v1::CreateDomainRequest req;
  req.mutable_spec()->set_name("web1");
  req.mutable_spec()->set_vcpus(2);
  req.mutable_spec()->set_memory_mib(256);
  req.set_start(true);
  v1::Domain d;
  ASSERT_TRUE(domains_stub_->CreateDomain(&ctx, req, &d).ok());
  EXPECT_EQ(d.name(), "web1");
  EXPECT_EQ(d.state(), v1::DOMAIN_STATE_RUNNING);
  EXPECT_EQ(d.memory_mib(), 256u);
  auto md = ctx.GetServerInitialMetadata();
  auto it = md.find("x-request-id");
  ASSERT_NE(it, md.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "req-42");
}

// GetDomain and ListDomains run on the callback API (DomainServiceBase): the same pipeline, so
// the same request id, answers and error codes as every other RPC.
TEST_F(GrpcServicesTest, InlineReadsEchoRequestIdAndAnswerLikeTheOthers) {
  v1::Domain d;
  ASSERT_TRUE(Create("web1", 1, 64, true, &d).ok());
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-request-id", "req-get");
  v1::GetDomainRequest get;
  get.set_name("web1");
  v1::Domain got;
  ASSERT_TRUE(domains_stub_->GetDomain(&ctx, get, &got).ok());
  EXPECT_EQ(got.name(), "web1");
  EXPECT_EQ(got.state(), v1::DOMAIN_STATE_RUNNING);
  auto md = ctx.GetServerInitialMetadata();
  auto it = md.find("x-request-id");
  ASSERT_NE(it, md.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "req-get");

  grpc::ClientContext lctx;
  lctx.AddMetadata("x-request-id", "req-list");
  v1::ListDomainsResponse list;
  ASSERT_TRUE(domains_stub_->ListDomains(&lctx, v1::ListDomainsRequest(), &list).ok());
  ASSERT_EQ(list.domains_size(), 1);
  EXPECT_EQ(list.domains(0).name(), "web1");
  auto lmd = lctx.GetServerInitialMetadata();
  ASSERT_NE(lmd.find("x-request-id"), lmd.end());
  EXPECT_EQ(std::string(lmd.find("x-request-id")->second.data(), lmd.find("x-request-id")->second.size()), "req-list");

  grpc::ClientContext bad;
  get.set_name("bad name");
  grpc::Status s = domains_stub_->GetDomain(&bad, get, &got);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
}

std::map<std::string, std::string> LabelsOf(const v1::Domain& d) {
  return std::map<std::string, std::string>(d.labels().begin(), d.labels().end());
}

// Labels cross the API edge both ways: CreateDomain's spec to the hypervisor, and back in
// CreateDomain's answer, GetDomain and ListDomains. A bad one is INVALID_ARGUMENT naming the
// label, and nothing is defined.
TEST_F(GrpcServicesTest, LabelsGoInWithTheSpecAndComeBackFromEveryRead) {
  v1::CreateDomainRequest req;
  req.mutable_spec()->set_name("web1");
  req.mutable_spec()->set_vcpus(1);
  req.mutable_spec()->set_memory_mib(64);
  (*req.mutable_spec()->mutable_labels())["cloudstack.instance"] = "i-2-100-VM";
  (*req.mutable_spec()->mutable_labels())["note"] = "<a & b>";
  v1::Domain d;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(domains_stub_->CreateDomain(&ctx, req, &d).ok());
  }
  const std::map<std::string, std::string> want = {{"cloudstack.instance", "i-2-100-VM"}, {"note", "<a & b>"}};
  EXPECT_EQ(LabelsOf(d), want);
  {
    grpc::ClientContext ctx;
    v1::GetDomainRequest get;
    get.set_name("web1");
    ASSERT_TRUE(domains_stub_->GetDomain(&ctx, get, &d).ok());
    EXPECT_EQ(LabelsOf(d), want);
  }
  {
    grpc::ClientContext ctx;
    v1::ListDomainsResponse list;
    ASSERT_TRUE(domains_stub_->ListDomains(&ctx, {}, &list).ok());
    ASSERT_EQ(list.domains_size(), 1);
    EXPECT_EQ(LabelsOf(list.domains(0)), want);
  }
  req.mutable_spec()->set_name("web2");
  (*req.mutable_spec()->mutable_labels())["Bad Key"] = "x";
  grpc::ClientContext ctx;
  grpc::Status s = domains_stub_->CreateDomain(&ctx, req, &d);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.labels[\"Bad Key\"]"));
  EXPECT_FALSE(hv_.GetDomain("web2").ok());
}

TEST_F(GrpcServicesTest, ErrorCodes) {
  v1::Domain d;
  grpc::Status s = Create("bad name", 1, 64, false, &d);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.name"));
  EXPECT_EQ(Create("x", 0, 64, false, &d).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Create("x", 1, 1ULL << 40, false, &d).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(Create("web1", 1, 64, true, &d).ok());
  EXPECT_EQ(Create("web1", 1, 64, false, &d).error_code(), grpc::StatusCode::ALREADY_EXISTS);

  grpc::ClientContext ctx;
  v1::GetDomainRequest get;
  get.set_name("ghost");
  EXPECT_EQ(domains_stub_->GetDomain(&ctx, get, &d).error_code(), grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext ctx2;
  v1::CreateDomainRequest no_spec;
  s = domains_stub_->CreateDomain(&ctx2, no_spec, &d);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec"));

  grpc::ClientContext ctx3;
  v1::DeleteDomainRequest del;
  del.set_name("web1");
  v1::DeleteDomainResponse dr;
  EXPECT_EQ(domains_stub_->DeleteDomain(&ctx3, del, &dr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(GrpcServicesTest, LifecycleActions) {
  v1::Domain d;
  ASSERT_TRUE(Create("web1", 1, 64, false, &d).ok());
  v1::DomainRef ref;
  ref.set_name("web1");
  auto call = [&](auto method) {
    grpc::ClientContext ctx;
    v1::Domain out;
    grpc::Status s = (domains_stub_.get()->*method)(&ctx, ref, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out.state();
  };
  EXPECT_EQ(call(&v1::DomainService::Stub::StartDomain), v1::DOMAIN_STATE_RUNNING);
  EXPECT_EQ(call(&v1::DomainService::Stub::SuspendDomain), v1::DOMAIN_STATE_PAUSED);
  EXPECT_EQ(call(&v1::DomainService::Stub::ResumeDomain), v1::DOMAIN_STATE_RUNNING);
  EXPECT_EQ(call(&v1::DomainService::Stub::RebootDomain), v1::DOMAIN_STATE_RUNNING);
  EXPECT_EQ(call(&v1::DomainService::Stub::DestroyDomain), v1::DOMAIN_STATE_SHUTOFF);
  EXPECT_EQ(call(&v1::DomainService::Stub::StartDomain), v1::DOMAIN_STATE_RUNNING);

  hv_.guests_honour_shutdown = false;
  grpc::ClientContext ctx;
  v1::ShutdownDomainRequest sreq;
  sreq.set_name("web1");
  sreq.set_timeout_seconds(2);
  v1::ShutdownDomainResponse sresp;
  ASSERT_TRUE(domains_stub_->ShutdownDomain(&ctx, sreq, &sresp).ok());
  EXPECT_TRUE(sresp.forced());
  EXPECT_EQ(sresp.domain().state(), v1::DOMAIN_STATE_SHUTOFF);

  grpc::ClientContext ctx2;
  v1::DeleteDomainRequest del;
  del.set_name("web1");
  v1::DeleteDomainResponse dr;
  ASSERT_TRUE(domains_stub_->DeleteDomain(&ctx2, del, &dr).ok());
  grpc::ClientContext ctx3;
  v1::ListDomainsResponse list;
  ASSERT_TRUE(domains_stub_->ListDomains(&ctx3, {}, &list).ok());
  EXPECT_EQ(list.domains_size(), 0);
}

TEST_F(GrpcServicesTest, WatchStreamsFilteredEventsInOrder) {
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.add_domain_names("web1");
  auto reader = events_->Watch(&ctx, req);
  // Publish until the subscription is in place, then the events under test.
  while (hub_.subscriber_count() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto event = [](const std::string& name, hv::DomainEventType t, const std::string& detail) {
    hv::DomainEvent e;
    e.time = std::chrono::system_clock::now();
    e.domain_name = name;
    e.type = t;
    e.detail = detail;
    return e;
  };
  hv_.Emit(event("other", hv::DomainEventType::kStarted, "booted"));
  hv_.Emit(event("web1", hv::DomainEventType::kStarted, "booted"));
  hv_.Emit(event("web1", hv::DomainEventType::kStopped, "destroyed"));
  v1::DomainEvent a, b;
  ASSERT_TRUE(reader->Read(&a));
  ASSERT_TRUE(reader->Read(&b));
  EXPECT_EQ(a.domain_name(), "web1");
  EXPECT_EQ(a.type(), v1::DOMAIN_EVENT_TYPE_STARTED);
  EXPECT_EQ(a.detail(), "booted");
  EXPECT_EQ(b.type(), v1::DOMAIN_EVENT_TYPE_STOPPED);
  EXPECT_EQ(b.sequence(), a.sequence() + 1);
  EXPECT_GT(a.time().seconds(), 0);
  ctx.TryCancel();
  v1::DomainEvent ignored;
  while (reader->Read(&ignored)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(GrpcServicesTest, WatchWithOperations_CarriesTheOperationAndItsState) {
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.set_operations(v1::WATCH_OPERATIONS_ONLY);
  req.set_operation_id(9);
  auto reader = events_->Watch(&ctx, req);
  reader->WaitForInitialMetadata();
  service::OperationEvent other;
  other.op.id = 8;
  hub_.Publish(other);
  hv::DomainEvent started;
  started.domain_name = "web1";
  started.type = hv::DomainEventType::kStarted;
  hub_.Publish(started);
  service::OperationEvent e;
  e.op.id = 9;
  e.op.begin.set_type(v1::OPERATION_KIND_IMPORT_IMAGE);
  e.op.begin.set_pool("p0");
  e.op.begin.set_image("golden");
  e.state = v1::OPERATION_STATE_SUCCEEDED;
  e.done = e.total = 4096;
  e.end_unix_ms = 1700000000000;
  hub_.Publish(e);
  v1::DomainEvent got;
  ASSERT_TRUE(reader->Read(&got));
  EXPECT_EQ(got.type(), v1::DOMAIN_EVENT_TYPE_OPERATION);
  EXPECT_EQ(got.detail(), "succeeded");
  EXPECT_EQ(got.operation().id(), 9u);
  EXPECT_EQ(got.operation().kind(), v1::OPERATION_KIND_IMPORT_IMAGE);
  EXPECT_EQ(got.operation().state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(got.operation().image(), "golden");
  EXPECT_EQ(got.operation().bytes_done(), 4096u);
  EXPECT_EQ(got.operation().bytes_total(), 4096u);
  EXPECT_EQ(got.operation().end_time().seconds(), 1700000000);
  ctx.TryCancel();
  while (reader->Read(&got)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(GrpcServicesTest, WatchRefusesAnOperationIdWithoutOperations) {
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.set_operation_id(3);
  auto reader = events_->Watch(&ctx, req);
  v1::DomainEvent got;
  EXPECT_FALSE(reader->Read(&got));
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("operation_id"), std::string::npos) << s.error_message();
  EXPECT_EQ(hub_.subscriber_count(), 0u);
}

// Agent shutdown closes the hub: every open stream ends with OK after the events already
// queued, and none of them held a thread of its own (callback API).
TEST_F(GrpcServicesTest, ClosingTheHubEndsEveryStreamWithOkAndStreamsHoldNoThreads) {
  auto threads = [] {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
    return n;
  };
  constexpr int kStreams = 50;
  const size_t before = threads();
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::DomainEvent>>> readers;
  v1::WatchEventsRequest req;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(events_->Watch(contexts.back().get(), req));
    readers.back()->WaitForInitialMetadata();  // the server's stream exists now
  }
  const size_t with_streams = threads();
  EXPECT_EQ(hub_.subscriber_count(), static_cast<size_t>(kStreams));
  hv::DomainEvent e;
  e.time = std::chrono::system_clock::now();
  e.domain_name = "web1";
  e.type = hv::DomainEventType::kStarted;
  hv_.Emit(e);
  hub_.Close();
  for (auto& r : readers) {
    v1::DomainEvent got;
    ASSERT_TRUE(r->Read(&got));  // the event queued before the close still arrives
    EXPECT_EQ(got.domain_name(), "web1");
    EXPECT_FALSE(r->Read(&got));
    EXPECT_TRUE(r->Finish().ok());
  }
  // 50 synchronous streams held 50 server threads; reactors hold none (what may appear is
  // gRPC's own pool growing by a few).
  EXPECT_LT(with_streams - before, static_cast<size_t>(kStreams / 5))
      << before << " threads before, " << with_streams << " with " << kStreams << " streams";
}

}  // namespace
}  // namespace hvagent::api
