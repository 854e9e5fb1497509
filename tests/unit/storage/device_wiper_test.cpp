#include "storage/device_wiper.h"

#include <gtest/gtest.h>

#include <fstream>

namespace hvagent::storage {
namespace {

TEST(DeviceWiperUnit, RefusesPathsOutsideDev) {
  DeviceWiper wiper;
  int calls = 0;
  auto count = [&](const WipeProgress&) { ++calls; };
  for (const char* path : {"", "/etc/passwd", "../../etc/passwd", "/dev/../etc/passwd", "/dev/..", "/dev/",
                           "dev/sda", "/devices/sda"}) {
    for (WipeMode mode : {WipeMode::kZero, WipeMode::kDiscard, WipeMode::kNone}) {
      EXPECT_EQ(wiper.Wipe(path, mode, count).code(), absl::StatusCode::kInvalidArgument) << path;
    }
  }
  EXPECT_EQ(calls, 0);
}

TEST(DeviceWiperUnit, RefusesWhatIsNotABlockDevice) {
  DeviceWiper wiper;
  for (const char* path : {"/dev/null", "/dev/zero", "/dev/does-not-exist-hvagent", "/dev/shm"}) {
    EXPECT_EQ(wiper.Wipe(path, WipeMode::kZero, nullptr).code(), absl::StatusCode::kFailedPrecondition) << path;
    EXPECT_EQ(wiper.Wipe(path, WipeMode::kDiscard, nullptr).code(), absl::StatusCode::kFailedPrecondition) << path;
  }
}

TEST(DeviceWiperUnit, RefusesARegularFileUnderDev) {
  const std::string path = "/dev/shm/hvagent-device-wiper-unit";
  {
    std::ofstream f(path);
    if (!f) GTEST_SKIP() << "cannot create " << path;
    f << "secret";
  }
  DeviceWiper wiper;
  EXPECT_EQ(wiper.Wipe(path, WipeMode::kZero, nullptr).code(), absl::StatusCode::kFailedPrecondition);
  std::ifstream in(path);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "secret");
  std::remove(path.c_str());
}

TEST(DeviceWiperUnit, NoneDoesNothing) {
  DeviceWiper wiper;
  int calls = 0;
  EXPECT_TRUE(wiper.Wipe("/dev/null", WipeMode::kNone, [&](const WipeProgress&) { ++calls; }).ok());
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace hvagent::storage
