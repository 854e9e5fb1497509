// Specification of FromJson: protobuf's JSON mapping, held to the JSON types the message
// declares (protobuf's parser alone takes "yes" for a bool and "12" for an int32).
#include "agent/api/rest/json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "hvagent/v1/domain.pb.h"
#include "agent/service/admission.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

absl::Status ParseCreate(const std::string& body) {
  v1::CreateDomainRequest req;
  return FromJson(body, &req);
}

TEST(FromJsonTest, WellTypedBodiesParse) {
  v1::CreateDomainRequest req;
  ASSERT_TRUE(FromJson(R"({"spec": {"name": "web1", "vcpus": 2, "memory_mib": "512", "serial_console": true,
      "firmware": {"type": "TYPE_BIOS"}, "disks": [{"target": "vda", "source_path": "/x", "readonly": false}]},
      "start": true})", &req).ok());
  EXPECT_TRUE(req.start());
  EXPECT_EQ(req.spec().vcpus(), 2u);
  EXPECT_EQ(req.spec().memory_mib(), 512u);
  EXPECT_EQ(req.spec().firmware().type(), v1::FirmwareBoot::TYPE_BIOS);
  EXPECT_FALSE(req.spec().disks(0).readonly());
}

TEST(FromJsonTest, SixtyFourBitNumbersMayBeStringsOrNumbers) {
  // proto3's canonical JSON for (u)int64 is a string: a JSON number cannot hold every value.
  EXPECT_TRUE(ParseCreate(R"({"spec": {"memory_mib": "18446744073709551615"}})").ok());
  EXPECT_TRUE(ParseCreate(R"({"spec": {"memory_mib": 512}})").ok());
  EXPECT_EQ(ParseCreate(R"({"spec": {"memory_mib": true}})").code(), absl::StatusCode::kInvalidArgument);
}

TEST(FromJsonTest, NullIsTheDefaultOfAnyField) {
  v1::CreateDomainRequest req;
  ASSERT_TRUE(FromJson(R"({"spec": {"name": null, "vcpus": null, "firmware": null, "disks": null}, "start": null})",
                       &req).ok());
  EXPECT_FALSE(req.start());
}

TEST(FromJsonTest, WrongJsonTypesAreRefusedNamingTheField) {
  struct Case {
    std::string body, message;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"start": "yes"})", "start: must be a JSON boolean (true or false), not a string"},
           {R"({"start": "true"})", "start: must be a JSON boolean (true or false), not a string"},
           {R"({"start": 1})", "start: must be a JSON boolean (true or false), not a number"},
           {R"({"spec": {"vcpus": "2"}})", "spec.vcpus: must be a JSON number, not a string"},
           {R"({"spec": {"vcpus": true}})", "spec.vcpus: must be a JSON number, not a boolean"},
           {R"({"spec": {"serialConsole": "1"}})", "spec.serial_console: must be a JSON boolean"},
           {R"({"spec": {"name": 7}})", "spec.name: must be a JSON string, not a number"},
           {R"({"spec": {"firmware": {"type": 1}}})", "spec.firmware.type: must be the name of a Type value"},
           {R"({"spec": {"firmware": "TYPE_BIOS"}})", "spec.firmware: must be a JSON object, not a string"},
           {R"({"spec": {"disks": {"target": "vda"}}})", "spec.disks: must be a JSON array, not an object"},
           {R"({"spec": {"disks": [{"target": "vda"}, {"target": "vdb", "readonly": "no"}]}})",
            "spec.disks[1].readonly: must be a JSON boolean"},
       }) {
    absl::Status s = ParseCreate(c.body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_THAT(Msg(s), HasSubstr("request body: " + c.message)) << c.body;
  }
}

TEST(FromJsonTest, OtherMessagesAreHeldToTheirTypesToo) {
  v1::DeleteDomainRequest del;
  EXPECT_EQ(FromJson(R"({"name": "web1", "force": "yes"})", &del).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(del.force()) << "a refused body leaves nothing half-parsed";
  v1::ShutdownDomainRequest shutdown;
  EXPECT_THAT(Msg(FromJson(R"({"timeout_seconds": "30"})", &shutdown)),
              HasSubstr("timeout_seconds: must be a JSON number"));
  EXPECT_TRUE(FromJson(R"({"timeout_seconds": 30})", &shutdown).ok());
}

TEST(FromJsonTest, ProtobufStillRefusesWhatItRefused) {
  for (std::string body : {"{", "not json", R"({"spec": {"nmae": "x"}})", R"({"spec": {"vcpus": -1}})",
                           R"({"spec": {"vcpus": 1.5}})", R"({"spec": {"firmware": {"type": "TYPE_COREBOOT"}}})"}) {
    absl::Status s = ParseCreate(body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_THAT(Msg(s), HasSubstr("request body")) << body;
  }
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

// Capacity refusals are told apart by their payload: the host's CPU/memory (409) or a pool
// (507); a plain RESOURCE_EXHAUSTED stays 507 and the rate limiter's 429 is the router's.
TEST(ErrorResponseTest, CapacityKindPicksTheHttpStatus) {
  HttpResponse compute = ErrorResponse(service::CapacityExhausted(service::CapacityKind::kCompute, "spec: full"));
  EXPECT_EQ(compute.status, 409);
  EXPECT_THAT(compute.body, ::testing::HasSubstr(R"("code":"RESOURCE_EXHAUSTED")"));
  EXPECT_THAT(compute.body, ::testing::HasSubstr(R"("details":"capacity: compute")"));
  HttpResponse storage = ErrorResponse(service::CapacityExhausted(service::CapacityKind::kStorage, "pool: full"));
  EXPECT_EQ(storage.status, 507);
  EXPECT_THAT(storage.body, ::testing::HasSubstr(R"("details":"capacity: storage")"));
  EXPECT_EQ(ErrorResponse(absl::ResourceExhaustedError("pool full")).status, 507);
}

}  // namespace
}  // namespace hvagent::api
