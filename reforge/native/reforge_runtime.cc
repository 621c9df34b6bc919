// reforge's C API over the TVM runtime (see reforge_runtime.h): a handle owns the model's Relax VM,
// the input tensors set so far and the outputs of the last run. Every entry point catches what the
// runtime throws and turns it into -1 / NULL plus a thread-local message.
#include "reforge_runtime.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

struct reforge_model {
  reforge_model(ffi::Module library, ffi::Module vm) : library(library), vm(vm) {}
  ffi::Module library;  // model.so, kept loaded while the VM runs its code
  ffi::Module vm;
  ffi::Function main_fn;
  int threads = 0;
  std::vector<std::string> input_names;
  std::vector<ffi::Optional<ffi::Tensor>> inputs;
  std::vector<ffi::Tensor> outputs;
  std::vector<std::string> output_dtypes;
  std::vector<std::vector<int64_t>> output_shapes;
};

namespace {

thread_local std::string last_error;
thread_local int pool_threads = 0;  // the worker count this thread's TVM pool was set to (0: untouched)

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) + 64) / 64 * 64);  // never 0 bytes
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// Run `body`, returning `failed` with the reason in last_error if it throws.
template <typename T, typename F>
T Guard(T failed, F body) {
  try {
    return body();
  } catch (const ffi::Error& err) {
    last_error = err.kind() + ": " + err.message();
  } catch (const std::exception& err) {
    last_error = err.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return failed;
}

void Require(bool ok, const std::string& why) {
  if (!ok) throw std::invalid_argument(why);
}

template <typename Model>  // reforge_model or const reforge_model
Model& Checked(Model* model) {
  Require(model != nullptr, "the model handle is NULL");
  return *model;
}

// Use `threads` workers of the calling thread's TVM pool for the kernels it launches next
// (mode 1, "big cores", is every core on x86).
void UsePoolThreads(int threads) {
  if (threads <= 0 || pool_threads == threads) return;
  ffi::Function::GetGlobalRequired("runtime.config_threadpool")(1, threads);
  int got = ffi::Function::GetGlobalRequired("runtime.NumThreads")().cast<int>();
  Require(got == threads, "threads=" + std::to_string(threads) + ": TVM's thread pool holds " +
                              std::to_string(got) + " (set TVM_NUM_THREADS=" + std::to_string(threads) +
                              " in the environment for more)");
  pool_threads = threads;
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& v : *arr) Flatten(v, out);
  } else {
    throw std::runtime_error("the model returned something other than tensors and tuples of tensors");
  }
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string all;
  for (const std::string& n : names) all += (all.empty() ? "" : ", ") + n;
  return all;
}

std::string JoinDims(const std::vector<int64_t>& dims) {
  std::string all;
  for (int64_t d : dims) all += (all.empty() ? "" : ", ") + std::to_string(d);
  return all;
}

}  // namespace

extern "C" {

reforge_model* reforge_load(const char* model_so, int threads) {
  return Guard<reforge_model*>(nullptr, [&]() {
    Require(model_so != nullptr, "reforge_load: the path is NULL");
    Require(threads >= 0, "reforge_load: threads=" + std::to_string(threads) + " must be 0 (default) or more");
    std::string path = model_so;
    if (path.find('/') == std::string::npos) path = "./" + path;  // a file here, not a library on the search path
    ffi::Module library = ffi::Module::LoadFromFile(path);
    auto load_executable = library->GetFunction("vm_load_executable");
    Require(load_executable.has_value(), std::string("'") + model_so + "' is not a Relax VM executable");
    auto model = std::make_unique<reforge_model>(library, (*load_executable)().cast<ffi::Module>());
    model->vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // pooled allocator
    model->main_fn = model->vm->GetFunction("main").value();
    int arity = model->vm->GetFunction("get_function_arity").value()("main").cast<int>();
    ffi::Function param_name = model->vm->GetFunction("get_function_param_name").value();
    for (int i = 0; i < arity; ++i) model->input_names.push_back(param_name("main", i).cast<std::string>());
    model->inputs.resize(arity);
    model->threads = threads;
    UsePoolThreads(threads);
    return model.release();
  });
}

int reforge_num_inputs(const reforge_model* model) {
  return Guard<int>(-1, [&]() { return static_cast<int>(Checked(model).input_names.size()); });
}

const char* reforge_input_name(const reforge_model* model, int index) {
  return Guard<const char*>(nullptr, [&]() {
    const reforge_model& m = Checked(model);
    Require(index >= 0 && index < static_cast<int>(m.input_names.size()),
            "reforge_input_name: index " + std::to_string(index) + " out of range (the model has " +
                std::to_string(m.input_names.size()) + " inputs)");
    return m.input_names[index].c_str();
  });
}

int reforge_set_input(reforge_model* model, const char* name, const void* data, size_t nbytes, const char* dtype,
                      const int64_t* shape, int ndim) {
  return Guard<int>(-1, [&]() {
    reforge_model& m = Checked(model);
    Require(name != nullptr && dtype != nullptr, "reforge_set_input: name and dtype must not be NULL");
    size_t index = 0;
    while (index < m.input_names.size() && m.input_names[index] != name) ++index;
    Require(index < m.input_names.size(), std::string("reforge_set_input: the model has no input '") + name +
                                              "' (its inputs: " + JoinNames(m.input_names) + ")");
    Require(ndim >= 0 && (ndim == 0 || shape != nullptr),
            std::string("reforge_set_input: input '") + name + "': bad rank " + std::to_string(ndim));
    std::vector<int64_t> dims(shape, shape + ndim);
    for (int64_t d : dims) {
      Require(d >= 0, std::string("reforge_set_input: input '") + name + "': negative dimension " + std::to_string(d));
    }
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(dims), ffi::StringToDLDataType(dtype),
                                             DLDevice{kDLCPU, 0});
    size_t bytes = ffi::GetDataSize(t.numel(), t.dtype());
    Require(nbytes == bytes, std::string("reforge_set_input: input '") + name + "': a " + dtype + " tensor of shape (" +
                                 JoinDims(dims) + ") holds " + std::to_string(bytes) + " bytes; " +
                                 std::to_string(nbytes) + " given");
    Require(bytes == 0 || data != nullptr, std::string("reforge_set_input: input '") + name + "': data is NULL");
    if (bytes) std::memcpy(t.data_ptr(), data, bytes);
    m.inputs[index] = t;
    return 0;
  });
}

int reforge_run(reforge_model* model) {
  return Guard<int>(-1, [&]() {
    reforge_model& m = Checked(model);
    std::vector<ffi::AnyView> args;
    for (size_t i = 0; i < m.inputs.size(); ++i) {
      Require(m.inputs[i].has_value(), "reforge_run: input '" + m.input_names[i] + "' was not set");
      args.emplace_back(*m.inputs[i]);
    }
    UsePoolThreads(m.threads);
    ffi::Any result;
    m.main_fn.CallPacked(args.data(), static_cast<int>(args.size()), &result);
    std::vector<ffi::Tensor> outputs;
    Flatten(result, &outputs);
    m.outputs = outputs;
    m.output_dtypes.clear();
    m.output_shapes.clear();
    for (const ffi::Tensor& t : outputs) {
      m.output_dtypes.push_back(std::string(ffi::DLDataTypeToString(t.dtype())));
      m.output_shapes.emplace_back(t.shape().begin(), t.shape().end());
    }
    return 0;
  });
}

int reforge_num_outputs(const reforge_model* model) {
  return Guard<int>(-1, [&]() { return static_cast<int>(Checked(model).outputs.size()); });
}

namespace {
const ffi::Tensor& Output(const reforge_model& m, int index, const char* caller) {
  Require(!m.outputs.empty(), std::string(caller) + ": no outputs yet (call reforge_run first)");
  Require(index >= 0 && index < static_cast<int>(m.outputs.size()),
          std::string(caller) + ": output " + std::to_string(index) + " out of range (the model has " +
              std::to_string(m.outputs.size()) + " outputs)");
  return m.outputs[index];
}
}  // namespace

int reforge_output_info(const reforge_model* model, int index, const char** dtype, int* ndim,
                        const int64_t** shape, size_t* bytes) {
  return Guard<int>(-1, [&]() {
    const reforge_model& m = Checked(model);
    const ffi::Tensor& t = Output(m, index, "reforge_output_info");
    if (dtype) *dtype = m.output_dtypes[index].c_str();
    if (ndim) *ndim = static_cast<int>(m.output_shapes[index].size());
    if (shape) *shape = m.output_shapes[index].data();
    if (bytes) *bytes = ffi::GetDataSize(t.numel(), t.dtype());
    return 0;
  });
}

int reforge_get_output(const reforge_model* model, int index, void* buffer, size_t capacity) {
  return Guard<int>(-1, [&]() {
    const ffi::Tensor& t = Output(Checked(model), index, "reforge_get_output");
    size_t bytes = ffi::GetDataSize(t.numel(), t.dtype());
    Require(capacity >= bytes && (bytes == 0 || buffer != nullptr),
            "reforge_get_output: output " + std::to_string(index) + " holds " + std::to_string(bytes) +
                " bytes; the buffer has " + std::to_string(buffer ? capacity : 0));
    if (bytes) std::memcpy(buffer, t.data_ptr(), bytes);
    return 0;
  });
}

void reforge_free(reforge_model* model) { delete model; }

const char* reforge_last_error(void) { return last_error.c_str(); }

}  // extern "C"
