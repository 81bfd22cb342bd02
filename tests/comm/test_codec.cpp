// Codecs (comm/codec.hpp) and the compressed all-reduce (comm/algo/codec_ring.cpp):
// round-trip error within the documented bound, byte-identical results on
// every rank for 2..4 ranks and awkward sizes, the all-reduce error within
// its bound, error feedback, and clear errors for unsupported uses.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "comm/codec.hpp"
#include "core/error.hpp"
#include "harness.hpp"

namespace braid::comm {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

TEST(Codec, ParseAndNames) {
  EXPECT_EQ(parse_codec("f32"), CodecKind::F32);
  EXPECT_EQ(parse_codec("bf16"), CodecKind::Bf16);
  EXPECT_EQ(parse_codec("int8"), CodecKind::Int8);
  EXPECT_STREQ(codec("int8").name(), "int8");
  EXPECT_THROW(parse_codec("int4"), ConfigError);
  EXPECT_EQ(codec(CodecKind::F32).encoded_bytes(10), 40u);
  EXPECT_EQ(codec(CodecKind::Bf16).encoded_bytes(10), 20u);
  EXPECT_EQ(codec(CodecKind::Int8).encoded_bytes(0), 0u);
  EXPECT_EQ(codec(CodecKind::Int8).encoded_bytes(1), 5u);
  EXPECT_EQ(codec(CodecKind::Int8).encoded_bytes(kInt8Chunk + 1), 8u + kInt8Chunk + 1);
}

TEST(Codec, RoundTripWithinBound) {
  for (CodecKind k : {CodecKind::F32, CodecKind::Bf16, CodecKind::Int8}) {
    const Codec& c = codec(k);
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1023}, size_t{1024}, size_t{1025}, size_t{5003}}) {
      auto x = random_values(n, static_cast<uint32_t>(n) + 1, 3.0f);
      if (n > 3) x[2] = 0.0f;
      std::vector<unsigned char> enc(c.encoded_bytes(n));
      std::vector<float> y(n, -1.0f);
      c.encode(x.data(), n, enc.data());
      c.decode(enc.data(), n, y.data());
      for (size_t i = 0; i < n; ++i) {
        // The bound of the element's chunk (int8) or of the element itself.
        double max_abs = std::fabs(x[i]);
        if (k == CodecKind::Int8) {
          size_t lo = i / kInt8Chunk * kInt8Chunk, hi = std::min(n, lo + kInt8Chunk);
          max_abs = 0;
          for (size_t j = lo; j < hi; ++j) max_abs = std::max(max_abs, static_cast<double>(std::fabs(x[j])));
        }
        ASSERT_LE(std::fabs(static_cast<double>(y[i]) - x[i]), c.error_bound(max_abs))
            << c.name() << " n=" << n << " i=" << i;
      }
      if (k == CodecKind::F32 && n) { EXPECT_EQ(std::memcmp(x.data(), y.data(), n * 4), 0); }
    }
  }
}

TEST(Codec, Int8IsActuallyLossyAndZeroChunksStayZero) {
  const Codec& c = codec(CodecKind::Int8);
  std::vector<float> x = {1.0f, 0.5f, 0.001f, -1.0f};
  std::vector<unsigned char> enc(c.encoded_bytes(4));
  std::vector<float> y(4);
  c.encode(x.data(), 4, enc.data());
  c.decode(enc.data(), 4, y.data());
  EXPECT_FLOAT_EQ(y[0], 1.0f);
  EXPECT_FLOAT_EQ(y[3], -1.0f);
  EXPECT_EQ(y[2], 0.0f);  // below half a step of 1/127
  std::vector<float> zeros(3000, 0.0f), back(3000, 7.0f);
  enc.resize(c.encoded_bytes(3000));
  c.encode(zeros.data(), 3000, enc.data());
  c.decode(enc.data(), 3000, back.data());
  for (float v : back) ASSERT_EQ(v, 0.0f);
}

TEST(Codec, Int8MarksNonFiniteChunks) {
  const Codec& c = codec(CodecKind::Int8);
  std::vector<float> x(2000, 1.0f);
  x[1500] = INFINITY;
  std::vector<unsigned char> enc(c.encoded_bytes(x.size()));
  std::vector<float> y(x.size());
  c.encode(x.data(), x.size(), enc.data());
  c.decode(enc.data(), x.size(), y.data());
  EXPECT_FLOAT_EQ(y[0], 1.0f);     // first chunk is fine
  EXPECT_TRUE(std::isnan(y[1500]));  // the chunk with inf is NaN, not clamped
}

TEST(Codec, ErrorFeedbackKeepsWhatWasDropped) {
  const Codec& c = codec(CodecKind::Int8);
  const size_t n = 3000;
  auto x = random_values(n, 5);
  std::vector<float> residual(n, 0.0f), sent_total(n, 0.0f);
  std::vector<unsigned char> scratch(c.encoded_bytes(n)), enc(c.encoded_bytes(n));
  // Sending x every round for 50 rounds: with feedback the decoded sum tracks
  // 50 x with an error of one round's residual, not 50 of them.
  for (int round = 0; round < 50; ++round) {
    std::vector<float> data = x;
    add_error_feedback(c, data.data(), residual.data(), n, scratch.data());
    std::vector<float> decoded(n);
    c.encode(data.data(), n, enc.data());
    c.decode(enc.data(), n, decoded.data());
    for (size_t i = 0; i < n; ++i) sent_total[i] += decoded[i];
  }
  for (size_t i = 0; i < n; ++i) ASSERT_NEAR(sent_total[i] + residual[i], 50.0f * x[i], 1e-3f) << i;
}

// Runs a compressed all-reduce on n ranks; returns each rank's output.
std::vector<std::vector<float>> run_codec_all_reduce(int n, size_t count, CodecKind k, ReduceOp op,
                                                     std::vector<std::vector<float>>& inputs, bool in_place) {
  inputs.assign(static_cast<size_t>(n), {});
  for (int r = 0; r < n; ++r) inputs[static_cast<size_t>(r)] = random_values(count, 100u + static_cast<uint32_t>(r), 1.0f + r);
  std::vector<std::vector<float>> outputs(static_cast<size_t>(n));
  CommOptions opts;
  opts.timeout_s = 30;
  auto errors = harness::run_ranks(n, opts, [&](Communicator& comm) {
    const size_t r = static_cast<size_t>(comm.rank());
    std::vector<float> in = inputs[r];
    std::vector<float> out(count, -123.0f);
    CollectiveOptions o;
    o.codec = &codec(k);
    if (in_place) {
      comm.all_reduce(in.data(), in.data(), count, DType::F32, op, o).wait();
      outputs[r] = in;
    } else {
      comm.all_reduce(in.data(), out.data(), count, DType::F32, op, o).wait();
      EXPECT_EQ(in, inputs[r]) << "input modified";
      outputs[r] = out;
    }
  });
  for (auto& e : errors) EXPECT_FALSE(e) << harness::describe(e);
  return outputs;
}

TEST(CodecAllReduce, ByteIdenticalOnEveryRankAndWithinBound) {
  for (int n : {1, 2, 3, 4}) {
    for (CodecKind k : {CodecKind::F32, CodecKind::Bf16, CodecKind::Int8}) {
      for (size_t count : {size_t{1}, size_t{3}, size_t{5}, size_t{1031}, size_t{4099}, size_t{70001}}) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg}) {
          std::vector<std::vector<float>> inputs;
          const bool in_place = (count % 2) == 1;
          auto out = run_codec_all_reduce(n, count, k, op, inputs, in_place);
          const Codec& c = codec(k);
          for (int r = 1; r < n; ++r)
            ASSERT_EQ(std::memcmp(out[0].data(), out[static_cast<size_t>(r)].data(), count * 4), 0)
                << c.name() << " n=" << n << " count=" << count << " rank " << r << " differs";
          // Error bound: n encodes of values bounded by Σ_r max|x_r| (over the
          // whole vector, which bounds every chunk), as comm/codec.hpp states.
          double sum_max = 0;
          for (int r = 0; r < n; ++r) {
            double m = 0;
            for (float v : inputs[static_cast<size_t>(r)]) m = std::max(m, static_cast<double>(std::fabs(v)));
            sum_max += m;
          }
          const double div = op == ReduceOp::Avg ? n : 1;
          const double bound = n * c.error_bound(sum_max) / div + 1e-5 * sum_max;
          double worst = 0;
          for (size_t i = 0; i < count; ++i) {
            double exact = 0;
            for (int r = 0; r < n; ++r) exact += inputs[static_cast<size_t>(r)][i];
            exact /= div;
            worst = std::max(worst, std::fabs(exact - out[0][i]));
          }
          ASSERT_LE(worst, bound) << c.name() << " n=" << n << " count=" << count;
          if (k == CodecKind::F32) { ASSERT_LE(worst, 1e-5 * sum_max); }
        }
      }
    }
  }
}

TEST(CodecAllReduce, CompressedBytesOnTheWire) {
  const size_t count = 100000;
  for (CodecKind k : {CodecKind::F32, CodecKind::Int8}) {
    std::vector<uint64_t> sent(2);
    auto errors = harness::run_ranks(2, {}, [&](Communicator& comm) {
      std::vector<float> v(count, 1.0f);
      CollectiveOptions o;
      o.codec = &codec(k);
      const uint64_t before = comm.stats().bytes_sent;
      comm.all_reduce(v.data(), v.data(), count, DType::F32, ReduceOp::Sum, o).wait();
      sent[static_cast<size_t>(comm.rank())] = comm.stats().bytes_sent - before;
      EXPECT_FLOAT_EQ(v[123], 2.0f);
    });
    for (auto& e : errors) ASSERT_FALSE(e) << harness::describe(e);
    // Two ranks: each sends half the vector twice (reduce-scatter, all-gather).
    EXPECT_EQ(sent[0], 2 * codec(k).encoded_bytes(count / 2));
  }
}

TEST(CodecAllReduce, RejectsWhatItCannotCompress) {
  auto errors = harness::run_ranks(2, {}, [&](Communicator& comm) {
    std::vector<float> v(10, 1.0f);
    std::vector<double> d(10, 1.0);
    CollectiveOptions o;
    o.codec = &codec(CodecKind::Int8);
    EXPECT_THROW(comm.all_reduce(v.data(), v.data(), 10, DType::F32, ReduceOp::Max, o), ConfigError);
    EXPECT_THROW(comm.all_reduce(d.data(), d.data(), 10, DType::F64, ReduceOp::Sum, o), ConfigError);
    EXPECT_THROW(comm.broadcast(v.data(), 10, DType::F32, 0, o), ConfigError);
  });
  for (auto& e : errors) ASSERT_FALSE(e) << harness::describe(e);
}

TEST(CodecAllReduce, MismatchedCodecsFailInsteadOfCorrupting) {
  auto errors = harness::run_ranks(2, {}, [&](Communicator& comm) {
    std::vector<float> v(5000, 1.0f);
    CollectiveOptions o;
    o.codec = &codec(comm.rank() == 0 ? CodecKind::Int8 : CodecKind::Bf16);
    o.timeout_s = 10;
    comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Sum, o).wait();
  });
  for (auto& e : errors) EXPECT_TRUE(e) << "a codec mismatch must fail";
}

}  // namespace
}  // namespace braid::comm
