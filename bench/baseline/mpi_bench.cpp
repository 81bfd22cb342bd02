// Open MPI baseline for `braid bench comm --vs mpi`: the same ops, sizes,
// iteration counts, timing and checks as braid's worker, run under mpirun.
#include <mpi.h>

#include "bench/baseline/common.hpp"

using namespace braid::benchcommon;

namespace {

template <typename T>
void run(const Args& a, MPI_Datatype type, int rank, int n) {
  for (size_t s = 0; s < a.sizes.size(); ++s) {
    uint64_t count = elements(a.op, a.sizes[s], sizeof(T), n);
    uint64_t in_count = a.op == "reduce_scatter" ? count * n : count;
    uint64_t out_count = a.op == "all_gather" ? count * n : count;
    std::vector<T> in(in_count), out(out_count);
    auto fill = [&] {
      for (uint64_t i = 0; i < in_count; ++i) in[i] = static_cast<T>(input_value(rank, i));
      if (a.op == "broadcast" && rank != 0) std::fill(in.begin(), in.end(), T(0));
    };
    auto once = [&] {
      int c = static_cast<int>(count);
      if (a.op == "allreduce") MPI_Allreduce(in.data(), out.data(), c, type, MPI_SUM, MPI_COMM_WORLD);
      else if (a.op == "reduce_scatter") MPI_Reduce_scatter_block(in.data(), out.data(), c, type, MPI_SUM, MPI_COMM_WORLD);
      else if (a.op == "all_gather") MPI_Allgather(in.data(), c, type, out.data(), c, type, MPI_COMM_WORLD);
      else MPI_Bcast(in.data(), c, type, 0, MPI_COMM_WORLD);
    };
    fill();
    uint64_t warm = a.iters[s] / 5 + 2;
    for (uint64_t i = 0; i < warm; ++i) once();
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (uint64_t i = 0; i < a.iters[s]; ++i) once();
    double el = (MPI_Wtime() - t0) / static_cast<double>(a.iters[s]), mx = 0;
    MPI_Reduce(&el, &mx, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    // Check one fresh run.
    fill();
    std::fill(out.begin(), out.end(), T(0));
    once();
    const std::vector<T>& res = a.op == "broadcast" ? in : out;
    unsigned long long wrong = 0, total = 0;
    for (uint64_t i = 0; i < res.size(); ++i)
      if (static_cast<double>(res[i]) != expected_value(a.op, rank, n, i, count)) ++wrong;
    MPI_Reduce(&wrong, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) print_row("mpi", a, n, a.sizes[s], mx, total, "mpi");
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Args a = parse_args(argc, argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (a.dtype == "f32") run<float>(a, MPI_FLOAT, rank, n);
  else if (a.dtype == "f64") run<double>(a, MPI_DOUBLE, rank, n);
  else if (a.dtype == "i32") run<int32_t>(a, MPI_INT32_T, rank, n);
  else if (a.dtype == "i64") run<int64_t>(a, MPI_INT64_T, rank, n);
  else if (rank == 0) std::fprintf(stderr, "mpi baseline: dtype %s not supported\n", a.dtype.c_str());
  MPI_Finalize();
  return 0;
}
