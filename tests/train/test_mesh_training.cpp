// The parallel dimensions composed on a 4-rank mesh (ranks as threads):
// dp2 x tp2, dp2 x pp2 and tp2 x pp2 each train like one process with the
// same global batch.
#include <gtest/gtest.h>

#include "test_mesh_util.hpp"

namespace braid::train {
namespace {

using namespace mesh_test;

class MeshTraining : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_F(MeshTraining, Dp2Tp2EqualsOneProcess) {
  auto cfg = tiny_config();
  cfg.parallel.dp = 2;
  cfg.parallel.tp = 2;
  expect_mesh_equals_single(cfg, 3);
}

TEST_F(MeshTraining, Dp2Pp2EqualsOneProcess) {
  auto cfg = tiny_config();
  cfg.parallel.dp = 2;
  cfg.parallel.pp = 2;
  cfg.parallel.microbatches = 2;
  expect_mesh_equals_single(cfg, 3);
}

TEST_F(MeshTraining, Tp2Pp2EqualsOneProcess) {
  auto cfg = tiny_config();
  cfg.parallel.tp = 2;
  cfg.parallel.pp = 2;
  cfg.parallel.microbatches = 3;
  cfg.parallel.schedule = "gpipe";
  expect_mesh_equals_single(cfg, 3);
}

}  // namespace
}  // namespace braid::train
