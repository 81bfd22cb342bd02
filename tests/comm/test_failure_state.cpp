// FailureState: the first failure stands, and the mesh is aborted once an
// operation fails, even when the transport recorded a lost pair first.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <vector>

#include "comm/work.hpp"
#include "core/error.hpp"
#include "harness.hpp"
#include "net/mesh.hpp"

namespace braid::comm {
namespace {

// Delegates to an inner mesh and counts abort() calls.
class CountingMesh : public harness::FakeHostsMesh {
 public:
  explicit CountingMesh(std::shared_ptr<net::Mesh> inner)
      : FakeHostsMesh(inner, inner->host_ids()) {}
  void abort(net::AbortKind kind, const std::string& message) override {
    aborts.fetch_add(1);
    FakeHostsMesh::abort(kind, message);
  }
  std::atomic<int> aborts{0};
};

std::string text_of(const std::exception_ptr& e) { return harness::describe(e); }

// Seen in a 3-rank job: rank 1 was killed, the transport reported the lost
// pair (recorded without spreading), then rank 0's all-reduce failed on it
// while a receive from rank 2 was still posted. Without an abort the receive
// stayed posted and the transport later wrote into the caller's freed buffer.
TEST(FailureState, AnOperationFailingAfterAQuietPairLossStillAbortsTheMesh) {
  auto hub = net::make_inproc_hub(3);
  auto mesh = std::make_shared<CountingMesh>(net::connect_inproc(hub, 0));
  FailureState failure(mesh);

  std::vector<float> buf(16);
  net::RequestPtr from_two = mesh->pair(2).irecv(buf.data(), buf.size() * sizeof(float), /*tag=*/7, /*meta=*/0);
  ASSERT_FALSE(from_two->done());

  auto lost = std::make_exception_ptr(PeerLost(1, "connection to rank 1 failed"));
  EXPECT_EQ(failure.fail(lost, /*spread=*/false), lost);
  EXPECT_TRUE(failure.failed());
  EXPECT_EQ(mesh->aborts.load(), 0) << "a pair loss alone must not abort the mesh";
  EXPECT_FALSE(from_two->done());

  auto op_failed = std::make_exception_ptr(Timeout("all-reduce failed", ""));
  std::exception_ptr stands = failure.fail(op_failed, /*spread=*/true);
  EXPECT_EQ(text_of(stands), text_of(lost)) << "the first failure stands";
  EXPECT_EQ(mesh->aborts.load(), 1);
  ASSERT_TRUE(from_two->done()) << "the posted receive must fail, so its buffer can be freed";
  EXPECT_EQ(from_two->state(), net::Request::kFailed);

  failure.fail(op_failed, /*spread=*/true);
  EXPECT_EQ(mesh->aborts.load(), 1) << "the mesh is aborted once";
}

TEST(FailureState, AFailingOperationAbortsAtOnceAndOnlyOnce) {
  auto hub = net::make_inproc_hub(2);
  auto mesh = std::make_shared<CountingMesh>(net::connect_inproc(hub, 0));
  FailureState failure(mesh);
  auto first = std::make_exception_ptr(Timeout("first", ""));
  EXPECT_EQ(failure.fail(first), first);
  EXPECT_EQ(mesh->aborts.load(), 1);
  auto second = std::make_exception_ptr(Timeout("second", ""));
  EXPECT_EQ(failure.fail(second), first);
  EXPECT_EQ(mesh->aborts.load(), 1);
}

}  // namespace
}  // namespace braid::comm
