#include "coordinator/server/work_pool.h"

#include <atomic>
#include <future>
#include <vector>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(WorkPool, RunsJobsOffTheCallingThreadInOrder) {
  std::vector<int> order;
  std::mutex mu;
  std::promise<std::thread::id> where;
  {
    WorkPool pool(1, 100);
    ASSERT_TRUE(pool.Post([&] { where.set_value(std::this_thread::get_id()); }));
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(pool.Post([&, i] {
        std::lock_guard lock(mu);
        order.push_back(i);
      }));
    }
    EXPECT_NE(where.get_future().get(), std::this_thread::get_id());
  }  // the destructor runs what is still queued
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(WorkPool, RefusesJobsBeyondMaxPending) {
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::atomic<int> ran{0};
  WorkPool pool(1, 2);
  std::promise<void> started;
  ASSERT_TRUE(pool.Post([&] {
    started.set_value();
    gate.wait();
    ++ran;
  }));
  started.get_future().wait();  // the one thread is busy; the queue holds 2
  EXPECT_TRUE(pool.Post([&] { ++ran; }));
  EXPECT_TRUE(pool.Post([&] { ++ran; }));
  EXPECT_FALSE(pool.Post([&] { ++ran; }));
  release.set_value();
  while (ran.load() < 3) std::this_thread::yield();
  EXPECT_TRUE(pool.Post([&] { ++ran; }));
}

}  // namespace
}  // namespace switchyard
