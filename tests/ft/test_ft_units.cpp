// Fault tolerance in one process: BRAID_FT_DRILL parsing, the per-replica
// batch shape under fault.global_batch, and live healing between ranks run
// as threads (state bit-identical after the transfer, several joiners at
// once, a different model refused with a clear error).
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/fault_tolerance.hpp"
#include "train/heal_transfer.hpp"
#include "train/health_monitor.hpp"
#include "train/train_state.hpp"
#include "train/trainer.hpp"
#include "tests/train/pangram_corpus.hpp"

namespace braid::train {
namespace {

TEST(FaultDrill, ParsesAListOfDrills) {
  auto d = FaultDrill::parse("kill:2@10,stop:1@5/vote,kill:a@0/heal");
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].action, "kill");
  EXPECT_EQ(d[0].replica, "2");
  EXPECT_EQ(d[0].step, 10);
  EXPECT_EQ(d[0].phase, "step");
  EXPECT_EQ(d[1].action, "stop");
  EXPECT_EQ(d[1].phase, "vote");
  EXPECT_EQ(d[2].replica, "a");
  EXPECT_EQ(d[2].phase, "heal");
  EXPECT_TRUE(FaultDrill::parse("").empty());
}

TEST(FaultDrill, BadItemsAreConfigErrorsNamingTheItem) {
  for (const char* bad : {"kill", "kill:2", "boom:2@3", "kill:2@x", "kill:2@3/later", "kill:@3", "kill:2@-1"}) {
    try {
      FaultDrill::parse(std::string("stop:0@1,") + bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TrainConfig batch_config(const std::string& mode, int64_t batch, int64_t accum) {
  TrainConfig c;
  c.fault.global_batch = mode;
  c.train.batch_size = batch;
  c.train.grad_accum = accum;
  return c;
}

TEST(BatchShape, FixedGlobalBatchTakesMoreAccumulationWithFewerReplicas) {
  auto c = batch_config("fixed", 4, 1);
  // Sized for 3 replicas: 12 sequences per step.
  auto three = batch_shape_for(c, 3, 3);
  EXPECT_EQ(three.batch_size, 4);
  EXPECT_EQ(three.grad_accum, 1);
  auto two = batch_shape_for(c, 2, 3);
  EXPECT_EQ(two.global_sequences(2), 12);
  EXPECT_LE(two.batch_size, 4);
  auto one = batch_shape_for(c, 1, 3);
  EXPECT_EQ(one.global_sequences(1), 12);
  EXPECT_EQ(one.batch_size, 4);
  EXPECT_EQ(one.grad_accum, 3);
  // 5 replicas do not divide 12: rounded down to 10, never above the micro-batch.
  auto five = batch_shape_for(c, 5, 3);
  EXPECT_EQ(five.global_sequences(5), 10);
  EXPECT_LE(five.batch_size, 4);
  // A prime share: 7 sequences per replica split evenly.
  auto c2 = batch_config("fixed", 4, 7);  // 28 per replica at reference 1
  auto s = batch_shape_for(c2, 1, 1);
  EXPECT_EQ(s.batch_size * s.grad_accum, 28);
  EXPECT_LE(s.batch_size, 4);
}

TEST(BatchShape, PerReplicaKeepsTheConfiguredShape) {
  auto c = batch_config("per_replica", 4, 2);
  for (int n : {1, 2, 3, 8}) {
    auto s = batch_shape_for(c, n, 3);
    EXPECT_EQ(s.batch_size, 4);
    EXPECT_EQ(s.grad_accum, 2);
    EXPECT_EQ(s.global_sequences(n), 8 * n);
  }
}

using test::pangram_corpus;

TrainConfig tiny_config(int64_t width = 32) {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 2;
  c.model.width = width;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;
  c.optim.warmup_steps = 2;
  c.train.steps = 10;
  c.train.batch_size = 2;
  c.train.seed = 1234;
  c.train.threads = 1;
  return c;
}

// Every byte of the state and the blobs, for comparing two ranks.
std::string state_bytes(Trainer& t) {
  TrainState st(t);
  std::string out;
  for (const auto& h : st.held()) out.append(static_cast<const char*>(h.data), h.range.size());
  for (const auto& [k, v] : st.blobs().global) out += k + "=" + v + ";";
  return out;
}

// Rank 0 trains a few steps alone, then heals ranks 1..n-1 (fresh trainers)
// over an in-process communicator, in small chunks; every rank then holds the
// same bytes (and the same health-guard statistics) and trains on identically.
TEST(Healing, SeveralJoinersGetTheSourceStateBitIdentical) {
  const int world = 3;
  auto cfg = tiny_config();
  std::vector<std::unique_ptr<Trainer>> trainers;
  std::vector<std::unique_ptr<HealthMonitor>> monitors;  // their guards' statistics travel with the state
  for (int r = 0; r < world; ++r) {
    trainers.push_back(std::make_unique<Trainer>(cfg, pangram_corpus(), nullptr));
    monitors.push_back(std::make_unique<HealthMonitor>(*trainers.back(), cfg.health, ""));
  }
  auto guard_state = [&](int r) { return trainers[static_cast<size_t>(r)]->state_blobs().at("health_guard").save(); };
  for (int i = 0; i < 3; ++i) trainers[0]->train_step();
  ASSERT_NE(state_bytes(*trainers[0]), state_bytes(*trainers[1]));
  ASSERT_NE(guard_state(0), guard_state(1));

  auto hub = net::make_inproc_hub(world);
  HealOptions opts;
  opts.chunk_bytes = 4093;  // a prime: chunks do not line up with buffers or tensors
  opts.piece_bytes = 1500;  // each chunk goes as several messages through the bounce slots
  opts.window = 3;
  opts.timeout_s = 60;
  std::vector<HealStats> stats(world);
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        comm::Communicator c(net::connect_inproc(hub, r));
        TrainState st(*trainers[static_cast<size_t>(r)]);
        if (r == 0) stats[0] = send_training_state(c, st, {1, 2}, opts);
        else stats[static_cast<size_t>(r)] = receive_training_state(c, st, 0, opts);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);

  const std::string source = state_bytes(*trainers[0]);
  const uint64_t state_size = 12ull * static_cast<uint64_t>(trainers[0]->model().num_parameters());
  EXPECT_EQ(stats[0].bytes, 2 * state_size);
  for (int r = 1; r < world; ++r) {
    EXPECT_EQ(state_bytes(*trainers[static_cast<size_t>(r)]), source) << "rank " << r;
    EXPECT_EQ(stats[static_cast<size_t>(r)].bytes, state_size);
    // Each of the three buffers (params, adam_m, adam_v) is cut on its own.
    const uint64_t buffer = state_size / 3;
    EXPECT_EQ(stats[static_cast<size_t>(r)].chunks, 3 * ((buffer + opts.chunk_bytes - 1) / opts.chunk_bytes));
    EXPECT_EQ(trainers[static_cast<size_t>(r)]->step(), 3);
    EXPECT_EQ(guard_state(r), guard_state(0)) << "rank " << r << ": the health guard's statistics";
  }
  // The healed ranks continue exactly as the source does.
  const double loss = trainers[0]->train_step().loss;
  for (int r = 1; r < world; ++r) EXPECT_EQ(trainers[static_cast<size_t>(r)]->train_step().loss, loss);
}

TEST(Healing, ADifferentModelIsRefusedAndLeavesTheStateAlone) {
  auto hub = net::make_inproc_hub(2);
  Trainer source(tiny_config(32), pangram_corpus(), nullptr);
  source.train_step();
  Trainer other(tiny_config(64), pangram_corpus(), nullptr);
  const std::string before = state_bytes(other);
  HealOptions opts;
  opts.timeout_s = 3;
  std::exception_ptr recv_error;
  std::thread sender([&] {
    try {
      comm::Communicator c(net::connect_inproc(hub, 0));
      TrainState st(source);
      send_training_state(c, st, {1}, opts);
    } catch (...) {  // the receiver gave up: the chunks are never taken
    }
  });
  try {
    comm::Communicator c(net::connect_inproc(hub, 1));
    TrainState st(other);
    receive_training_state(c, st, 0, opts);
  } catch (...) {
    recv_error = std::current_exception();
  }
  sender.join();
  ASSERT_TRUE(recv_error);
  try {
    std::rethrow_exception(recv_error);
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("differs"), std::string::npos) << e.what();
  }
  EXPECT_EQ(other.step(), 0);
  EXPECT_EQ(state_bytes(other), before);
}

}  // namespace
}  // namespace braid::train

namespace braid::train {
namespace {

// The record keeper is the member with the lowest replica id: launcher slots
// compare as numbers ("10" after "2"), other ids as text.
TEST(RecordKeeper, LowestReplicaComparesSlotsAsNumbers) {
  auto members = [](std::vector<std::string> ids) {
    std::vector<coord::QuorumMember> out;
    for (auto& id : ids) {
      coord::QuorumMember m;
      m.replica_id = id;
      out.push_back(m);
    }
    return out;
  };
  EXPECT_EQ(lowest_replica(members({"2", "10", "1"})), "1");
  EXPECT_EQ(lowest_replica(members({"10", "2"})), "2");
  EXPECT_EQ(lowest_replica(members({"b", "a"})), "a");
  EXPECT_EQ(lowest_replica(members({})), "");
}

}  // namespace
}  // namespace braid::train
