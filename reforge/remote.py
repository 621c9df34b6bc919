"""Devices behind TVM's RPC tracker (``--rpc-tracker host:port --rpc-key KEY``).

Start a tracker and register devices with it:

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker TRACKER:9190 --key rasp4      # on each device

``reforge tune`` then measures candidates on every device registered under the key, in
parallel; ``reforge run`` runs an artifact on one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvm import rpc
from tvm.s_tir import meta_schedule as ms

from .errors import ReforgeError, one_line

SESSION_TIMEOUT = 600  # seconds one device session may last
_ADDRESS = re.compile(r"^(?P<host>[^:\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class RemoteDevices:
    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, tracker: str, key: str | None) -> "RemoteDevices":
        m = _ADDRESS.match(tracker or "")
        if not m:
            raise ReforgeError(f"bad --rpc-tracker '{tracker}': expected HOST:PORT, e.g. 127.0.0.1:9190")
        if not key:
            raise ReforgeError("--rpc-tracker needs --rpc-key, the key the devices registered under")
        return cls(m["host"], int(m["port"]), key)

    def __str__(self) -> str:
        return f"key '{self.key}' at tracker {self.host}:{self.port}"

    def count(self) -> int:
        """Devices registered under the key (free or busy)."""
        try:
            summary = rpc.connect_tracker(self.host, self.port).summary()
        except (OSError, RuntimeError) as err:
            raise ReforgeError(f"cannot reach the RPC tracker {self.host}:{self.port}: {one_line(err)}") from err
        found = sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{self.key}")
        if found == 0:
            raise ReforgeError(f"no device registered under {self}")
        return found

    def session(self) -> rpc.RPCSession:
        self.count()
        try:
            return rpc.connect_tracker(self.host, self.port).request(self.key, priority=1,
                                                                     session_timeout=SESSION_TIMEOUT)
        except (OSError, RuntimeError) as err:
            raise ReforgeError(f"no session from {self}: {one_line(err)}") from err

    def runner(self) -> ms.runner.RPCRunner:
        """A MetaSchedule runner measuring on every device under the key, one candidate each."""
        config = ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                                     session_timeout_sec=SESSION_TIMEOUT)
        return ms.runner.RPCRunner(rpc_config=config, max_workers=self.count())
