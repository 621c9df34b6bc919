// reforge's native runner, a command line over the C API (reforge_runtime.h): loads a compiled model
// (model.so), feeds it raw input files, writes its outputs as raw files and can time it. It uses only
// the TVM runtime (libtvm_runtime.so, libtvm_ffi.so), so it runs on a device, under qemu, or on this
// machine without Python.
//
// usage: run_vm [--threads N] MODEL.so OUT_DIR REPEAT [IN.bin DTYPE SHAPE]...
//   one IN.bin per model input, in the model's (manifest.json's) order; DTYPE: float32, int32,
//   uint8, ... ; SHAPE: 1x3x224x224 ("scalar" for rank 0); N: TVM pool workers (default: the pool's)
// prints one line per output: "output K DTYPE SHAPE" (data in OUT_DIR/outK.bin), then, when
// REPEAT > 0, "time_ms T1 T2 ..." for REPEAT runs after the first; exits 2 with one line on stderr
// on any error.
#include "reforge_runtime.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

reforge_model* model = nullptr;

[[noreturn]] void Fail(const std::string& msg) {
  std::fprintf(stderr, "run_vm: %s\n", msg.c_str());
  reforge_free(model);
  std::exit(2);
}

void Check(int status) {
  if (status != 0) Fail(reforge_last_error());
}

int Number(const std::string& s, const char* what) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0) Fail(std::string(what) + " must be a count, not '" + s + "'");
  return static_cast<int>(v);
}

std::vector<int64_t> ParseShape(const std::string& s) {
  std::vector<int64_t> dims;
  if (s == "scalar") return dims;
  size_t start = 0;
  while (true) {
    size_t end = s.find('x', start);
    std::string dim = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    dims.push_back(Number(dim, ("shape " + s + ": a dimension").c_str()));
    if (end == std::string::npos) return dims;
    start = end + 1;
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  int threads = 0;
  if (args.size() >= 2 && args[0] == "--threads") {
    threads = Number(args[1], "--threads");
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.size() < 3 || (args.size() - 3) % 3 != 0) {
    Fail("usage: run_vm [--threads N] MODEL.so OUT_DIR REPEAT [IN.bin DTYPE SHAPE]...");
  }
  const std::string& out_dir = args[1];
  int repeat = Number(args[2], "REPEAT");

  model = reforge_load(args[0].c_str(), threads);
  if (model == nullptr) Fail(reforge_last_error());
  int given = static_cast<int>(args.size() - 3) / 3, expected = reforge_num_inputs(model);
  if (given != expected) Fail("the model takes " + std::to_string(expected) + " inputs; " + std::to_string(given) + " given");
  for (int i = 0; i < given; ++i) {
    const std::string& path = args[3 + 3 * i];
    std::string data = ReadFile(path);
    std::vector<int64_t> shape = ParseShape(args[5 + 3 * i]);
    Check(reforge_set_input(model, reforge_input_name(model, i), data.data(), data.size(), args[4 + 3 * i].c_str(),
                            shape.data(), static_cast<int>(shape.size())));
  }
  Check(reforge_run(model));
  for (int k = 0; k < reforge_num_outputs(model); ++k) {
    const char* dtype;
    int ndim;
    const int64_t* shape;
    size_t bytes;
    Check(reforge_output_info(model, k, &dtype, &ndim, &shape, &bytes));
    std::vector<char> buffer(bytes);
    Check(reforge_get_output(model, k, buffer.data(), buffer.size()));
    std::string path = out_dir + "/out" + std::to_string(k) + ".bin";
    if (!std::ofstream(path, std::ios::binary).write(buffer.data(), buffer.size())) Fail("cannot write " + path);
    std::string dims;
    for (int d = 0; d < ndim; ++d) dims += (d ? "x" : "") + std::to_string(shape[d]);
    std::printf("output %d %s %s\n", k, dtype, ndim ? dims.c_str() : "scalar");
  }
  if (repeat > 0) {
    std::printf("time_ms");
    for (int r = 0; r < repeat; ++r) {
      auto start = std::chrono::steady_clock::now();
      Check(reforge_run(model));
      std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
      std::printf(" %.6f", ms.count());
    }
    std::printf("\n");
  }
  reforge_free(model);
  return 0;
}
