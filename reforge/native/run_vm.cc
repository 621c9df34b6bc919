// reforge's native runner: loads a compiled model (model.so, a Relax VM executable), feeds it raw
// input files, writes its outputs as raw files and can time it. It uses only the TVM runtime
// (libtvm_runtime.so, libtvm_ffi.so), so it runs on a device or under qemu without Python.
//
// usage: run_vm MODEL.so OUT_DIR REPEAT [IN.bin DTYPE SHAPE]...
//   DTYPE: float32, int32, uint8, ... ; SHAPE: 1x3x224x224 ("scalar" for rank 0)
// prints one line per output: "output K DTYPE SHAPE" (data in OUT_DIR/outK.bin), then, when
// REPEAT > 0, "time_ms T1 T2 ..." for REPEAT runs after one warm-up run.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CPUAlloc {
  void AllocData(DLTensor* t) { t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) + 63) / 64 * 64); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void Fail(const std::string& msg) {
  std::fprintf(stderr, "run_vm: %s\n", msg.c_str());
  std::exit(2);
}

DLDataType ParseDtype(const std::string& s) {
  struct Kind { const char* prefix; uint8_t code; };
  for (Kind k : {Kind{"float", kDLFloat}, Kind{"uint", kDLUInt}, Kind{"int", kDLInt}}) {
    std::string p = k.prefix;
    if (s.rfind(p, 0) == 0) return DLDataType{k.code, static_cast<uint8_t>(std::stoi(s.substr(p.size()))), 1};
  }
  if (s == "bool") return DLDataType{kDLBool, 8, 1};
  Fail("unsupported dtype " + s);
}

std::string DtypeName(DLDataType t) {
  if (t.code == kDLBool) return "bool";
  const char* kind = t.code == kDLFloat ? "float" : t.code == kDLUInt ? "uint" : "int";
  return kind + std::to_string(t.bits);
}

std::vector<int64_t> ParseShape(const std::string& s) {
  std::vector<int64_t> dims;
  if (s == "scalar") return dims;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('x', start);
    dims.push_back(std::stoll(s.substr(start, end - start)));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return dims;
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& v : *arr) Flatten(v, out);
  } else {
    Fail("the model returned something other than tensors and tuples of tensors");
  }
}

}  // namespace

int Run(int argc, char** argv) {
  if (argc < 4 || (argc - 4) % 3 != 0) Fail("usage: run_vm MODEL.so OUT_DIR REPEAT [IN.bin DTYPE SHAPE]...");
  std::string out_dir = argv[2];
  int repeat = std::atoi(argv[3]);

  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // pooled allocator
  ffi::Function main_fn = vm->GetFunction("main").value();

  std::vector<ffi::Tensor> inputs;
  for (int i = 4; i < argc; i += 3) {
    std::vector<int64_t> shape = ParseShape(argv[i + 2]);
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(shape), ParseDtype(argv[i + 1]),
                                             DLDevice{kDLCPU, 0});
    size_t bytes = ffi::GetDataSize(t.numel(), t.dtype());
    std::ifstream in(argv[i], std::ios::binary);
    if (!in.read(static_cast<char*>(t.data_ptr()), bytes)) Fail(std::string("cannot read ") + argv[i]);
    inputs.push_back(t);
  }
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  auto call = [&]() {
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int>(args.size()), &result);
    return result;
  };

  std::vector<ffi::Tensor> outputs;
  Flatten(call(), &outputs);
  for (size_t k = 0; k < outputs.size(); ++k) {
    const ffi::Tensor& t = outputs[k];
    std::string path = out_dir + "/out" + std::to_string(k) + ".bin";
    std::ofstream(path, std::ios::binary)
        .write(static_cast<const char*>(t.data_ptr()), ffi::GetDataSize(t.numel(), t.dtype()));
    std::string shape;
    for (int64_t d : t.shape()) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    std::printf("output %zu %s %s\n", k, DtypeName(t.dtype()).c_str(), shape.empty() ? "scalar" : shape.c_str());
  }
  if (repeat > 0) {
    std::printf("time_ms");
    for (int r = 0; r < repeat; ++r) {
      auto start = std::chrono::steady_clock::now();
      call();
      std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
      std::printf(" %.6f", ms.count());
    }
    std::printf("\n");
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const ffi::Error& err) {
    Fail(err.kind() + ": " + err.message());
  } catch (const std::exception& err) {
    Fail(err.what());
  }
}
