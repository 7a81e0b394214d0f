#include <gtest/gtest.h>

#include "memory_registry.h"

using mc::Code;

TEST(Registry, RejectsOverlapsAndBadRanges) {
  mc::MemoryRegistry r;
  EXPECT_EQ(r.add(0x1000, 0x1000, "cpu:0"), Code::OK);
  EXPECT_EQ(r.add(0x1800, 0x10, "cpu:0"), Code::ADDRESS_OVERLAPPED);
  EXPECT_EQ(r.add(0x0800, 0x900, "cpu:0"), Code::ADDRESS_OVERLAPPED);
  EXPECT_EQ(r.add(0x0800, 0x800, "cpu:0"), Code::OK);  // touching is fine
  EXPECT_EQ(r.add(0x2000, 0x10, "cpu:0"), Code::OK);
  EXPECT_EQ(r.add(0x5000, 0, "cpu:0"), Code::INVALID_ARGUMENT);
  EXPECT_EQ(r.add(0, 10, "cpu:0"), Code::INVALID_ARGUMENT);
  EXPECT_EQ(r.add(UINT64_MAX - 4, 10, "cpu:0"), Code::INVALID_ARGUMENT);
  EXPECT_EQ(r.size(), 3u);
}

TEST(Registry, AcquireNeedsOneContainingRegion) {
  mc::MemoryRegistry r;
  ASSERT_EQ(r.add(0x1000, 0x1000, "cpu:0"), Code::OK);
  ASSERT_EQ(r.add(0x2000, 0x1000, "cpu:0"), Code::OK);
  EXPECT_TRUE(r.contains(0x1000, 0x1000));
  EXPECT_TRUE(r.contains(0x1fff, 1));
  EXPECT_FALSE(r.contains(0x1fff, 2)) << "spanning two adjacent regions is rejected, as upstream";
  EXPECT_FALSE(r.contains(0xfff, 2));
  EXPECT_FALSE(r.contains(0x1000, 0));
  EXPECT_FALSE(r.contains(UINT64_MAX, 2));
  EXPECT_FALSE(r.contains(0x3000, 1));
}

TEST(Registry, BusyRegionCannotBeRemoved) {
  mc::MemoryRegistry r;
  ASSERT_EQ(r.add(0x1000, 0x1000, "cpu:0"), Code::OK);
  {
    mc::RegionRef ref = r.acquire(0x1100, 0x10);
    ASSERT_TRUE(ref);
    EXPECT_EQ(r.remove(0x1000), Code::REGION_BUSY);
  }
  EXPECT_EQ(r.remove(0x1100), Code::ADDRESS_NOT_REGISTERED);
  EXPECT_EQ(r.remove(0x1000), Code::OK);
  EXPECT_EQ(r.remove(0x1000), Code::ADDRESS_NOT_REGISTERED);
}

TEST(Registry, ListKeepsRegistrationOrder) {
  mc::MemoryRegistry r;
  ASSERT_EQ(r.add(0x9000, 0x10, "b"), Code::OK);
  ASSERT_EQ(r.add(0x1000, 0x10, "a"), Code::OK);
  auto l = r.list();
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].addr, 0x9000u);
  EXPECT_EQ(l[1].addr, 0x1000u);
}

TEST(Registry, NonRemoteRegionsAreNotServedToPeers) {
  mc::MemoryRegistry r;
  ASSERT_EQ(r.add(0x1000, 0x1000, "cpu:0", nullptr, "", 0, /*remoteAccessible=*/false), Code::OK);
  EXPECT_TRUE(r.acquire(0x1000, 16, false));
  EXPECT_FALSE(r.acquire(0x1000, 16, true));
}
