"""An emulated aarch64 device behind TVM's RPC tracker, for tuning and running 'arm' modules here.

    python -m reforge.qemu_rpc_server --tracker 127.0.0.1:9190 --key aarch64

TVM's own server code registers with the tracker and accepts each session; the session itself is
served by reforge's aarch64 ``rpc_session`` (native/rpc_session.cc) under ``qemu-aarch64``, on the
accepted socket. What runs is the real aarch64 code; the times are the emulator's, so a search
measured here proves the path, not the speed of a board.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys

from tvm.rpc import server as tvm_server

from .errors import ReforgeError
from .remote import RemoteDevices
from .toolchains import AARCH64_SYSROOT, QEMU_AARCH64, aarch64_program, require


def _serve_under_qemu(qemu: str, program: str):
    """TVM's per-session entry (run in a forked child), replaced by an exec of the aarch64 session."""

    def serve(sock, _load_library, work_path) -> None:
        os.set_inheritable(sock.fileno(), True)
        os.execv(qemu, [qemu, "-L", AARCH64_SYSROOT, program, str(sock.fileno()), work_path.path])

    return serve


def _bind(host: str, first: int, last: int) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for port in range(first, last):
        try:
            sock.bind((host, port))
            sock.listen(1)
            return sock, port
        except OSError:
            continue
    raise ReforgeError(f"no free port in {first}-{last - 1} on {host}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reforge.qemu_rpc_server", description=__doc__.splitlines()[0])
    p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the RPC tracker to register with")
    p.add_argument("--key", required=True, help="the device key clients ask for (--rpc-key)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    p.add_argument("--port-end", type=int, default=9199, help="last port to try, exclusive (default 9199)")
    args = p.parse_args(argv)
    try:
        devices = RemoteDevices.parse(args.tracker, args.key)
        qemu = require(QEMU_AARCH64, "an emulated aarch64 device")
        program = aarch64_program("rpc_session")
        sock, port = _bind(args.host, args.port, args.port_end)
    except ReforgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(port, flush=True)
    tvm_server._serve_loop = _serve_under_qemu(qemu, program)  # TVM forks per session, then calls this
    multiprocessing.set_start_method("fork", force=True)
    tvm_server._listen_loop(sock, port, args.key, (devices.host, devices.port), None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
