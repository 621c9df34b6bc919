// reforge's device side of one TVM RPC session, for a device with no Python (an aarch64 board, or
// qemu-aarch64 on this machine): the session runs on a socket already accepted and handshaken by
// the server in front of it (reforge/qemu_rpc_server.py), with the TVM runtime alone.
//
// usage: rpc_session SOCKET_FD WORK_DIR
//   uploads land in WORK_DIR; modules load from there. The runtime's "extra" library is linked in
//   for tvm.contrib.random.random_fill_for_measure, which MetaSchedule's runner fills inputs with.
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace ffi = tvm::ffi;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: rpc_session SOCKET_FD WORK_DIR\n");
    return 2;
  }
  const std::string work = argv[2];
  auto workpath = [work](const ffi::String& name) { return ffi::String(work + "/" + std::string(name)); };
  ffi::Function::SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped(workpath), true);
  ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      ffi::Function::FromTyped([workpath](const ffi::String& name) { return ffi::Module::LoadFromFile(workpath(name)); }),
      true);
  try {
    ffi::Function::GetGlobalRequired("rpc.ServerLoop")(std::atoi(argv[1]));
  } catch (const ffi::Error& err) {
    std::fprintf(stderr, "rpc_session: %s: %s\n", err.kind().c_str(), err.message().c_str());
    return 1;
  }
  return 0;
}
