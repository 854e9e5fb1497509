// The storage part of the REST surface over the real StorageService and a fake pool.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/api/rest/rest_router.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;

class StorageResourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"}));
    storage_ = std::make_unique<service::StorageService>(hv_, std::move(backends));
    router_ = std::make_unique<RestRouter>(
        ops::Pipeline({.host = &host_, .domains = &domains_, .storage = storage_.get()}, {}));
    hv::DomainSpec spec{.name = "web1", .vcpus = 1, .memory_mib = 64};
    ASSERT_TRUE(hv_.DefineDomain(spec).ok());
  }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& body = "") {
    return router_->Handle({method, path, {}, body});
  }
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  service::DomainService domains_{hv_, clock_, {}};
  service::HostService host_{hv_};
  std::unique_ptr<service::StorageService> storage_;
  std::unique_ptr<RestRouter> router_;
};

TEST_F(StorageResourceTest, PoolsAndVolumesRoundTrip) {
  auto r = Call("GET", "/v1/pools");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("name":"vg0")"));
  r = Call("POST", "/v1/pools/vg0/volumes", R"({"name":"data","size_bytes":"1048576"})");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("state":"VOLUME_STATE_AVAILABLE")"));
  r = Call("POST", "/v1/pools/vg0/volumes/data:resize", R"({"size_bytes":"2097152"})");
  EXPECT_THAT(r.body, HasSubstr(R"("size_bytes":"2097152")"));
  r = Call("POST", "/v1/pools/vg0/volumes/data:attach", R"({"domain":"web1"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("attached_to":"web1")"));
  r = Call("DELETE", "/v1/pools/vg0/volumes/data");
  EXPECT_EQ(r.status, 409);
  EXPECT_THAT(r.body, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes/data:detach").status, 200);
  r = Call("DELETE", "/v1/pools/vg0/volumes/data");
  EXPECT_EQ(r.status, 202);
  EXPECT_THAT(r.body, HasSubstr("VOLUME_STATE_DELETING"));
  storage_->WaitForDeletes();
  EXPECT_EQ(Call("GET", "/v1/pools/vg0/volumes/data").status, 404);
}

// :detach with {"domain": ...}: the volume's own domain detaches; another is 409 naming the
// field, and the volume stays attached.
TEST_F(StorageResourceTest, DetachNamingTheWrongDomainIs409AndKeepsTheAttachment) {
  ASSERT_EQ(Call("POST", "/v1/pools/vg0/volumes", R"({"name":"data","size_bytes":"1048576"})").status, 201);
  ASSERT_EQ(Call("POST", "/v1/pools/vg0/volumes/data:attach", R"({"domain":"web1"})").status, 200);
  auto r = Call("POST", "/v1/pools/vg0/volumes/data:detach", R"({"domain":"web2"})");
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("code":"FAILED_PRECONDITION")"));
  EXPECT_THAT(r.body, HasSubstr("domain: volume 'data' is attached to domain 'web1'"));
  EXPECT_THAT(Call("GET", "/v1/pools/vg0/volumes/data").body, HasSubstr(R"("attached_to":"web1")"));
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes/data:detach", R"({"domain":"no such!"})").status, 400);
  r = Call("POST", "/v1/pools/vg0/volumes/data:detach", R"({"domain":"web1"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("attached_to":"")"));
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes/data:detach", R"({"domain":"web1"})").status, 404);
}

TEST_F(StorageResourceTest, Errors) {
  auto r = Call("GET", "/v1/pools/nope/volumes");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.body, HasSubstr("not a configured pool"));
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes", "{").status, 400);
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes", R"({"name":"x","size_bytes":"-1"})").status, 400);
  r = Call("POST", "/v1/pools/vg0/volumes", R"({"name":"big","size_bytes":"9999999999999"})");
  EXPECT_EQ(r.status, 507);
  EXPECT_THAT(r.body, HasSubstr("RESOURCE_EXHAUSTED"));
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes/x:explode").status, 404);
  EXPECT_EQ(Call("PUT", "/v1/pools").status, 405);
  EXPECT_EQ(Call("GET", "/v1/pools/vg0/snapshots").status, 404);
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

// The route binds pool and name from the path; a body that names others is refused, naming
// the field, and nothing is attached (issue 17: `:attach` used to ignore them).
TEST_F(StorageResourceTest, BodyThatContradictsThePathIs400AndChangesNothing) {
  ASSERT_EQ(Call("POST", "/v1/pools/vg0/volumes", R"({"name":"data","size_bytes":"1048576"})").status, 201);
  auto r = Call("POST", "/v1/pools/vg0/volumes/data:attach", R"({"pool":"vg1","domain":"web1"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("pool: 'vg1' in the body differs from 'vg0' in the path"));
  r = Call("POST", "/v1/pools/vg0/volumes/data:attach", R"({"name":"other","domain":"web1"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("name: 'other'"));
  EXPECT_THAT(Call("GET", "/v1/pools/vg0/volumes/data").body, HasSubstr(R"("attached_to":"")"));
  // Naming the same pool and volume in the body is fine.
  r = Call("POST", "/v1/pools/vg0/volumes/data:attach", R"({"pool":"vg0","name":"data","domain":"web1"})");
  EXPECT_EQ(r.status, 200) << r.body;
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

// The first endpoint added on the one edge after it was made: a route row, an operation row.
TEST_F(StorageResourceTest, ReleaseOwnershipKeepsARootDiskAsBorrowed) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "root", 1 << 20}, "web1").ok());
  EXPECT_THAT(Call("GET", "/v1/pools/vg0/volumes/root").body, HasSubstr(R"("ownership":"VOLUME_OWNERSHIP_OWNED")"));
  auto r = Call("POST", "/v1/pools/vg0/volumes/root:release-ownership");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("ownership":"VOLUME_OWNERSHIP_BORROWED")"));
  EXPECT_THAT(r.body, HasSubstr(R"("attached_to":"web1")"));
  EXPECT_EQ(Call("POST", "/v1/pools/vg0/volumes/ghost:release-ownership").status, 404);
  EXPECT_EQ(Call("GET", "/v1/pools/vg0/volumes/root:release-ownership").status, 405);
}

}  // namespace
}  // namespace hvagent::api
