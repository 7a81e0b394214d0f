#!/usr/bin/env python3
"""A real upstream Mooncake engine (mooncake.engine.TransferEngine), driven by JSON lines.

Used by test/interop/transfer-upstream.test.ts through test/interop/peers/te-peer.ts.
One JSON command per stdin line; one answer per command on stdout, on a line starting with "@@"
(the engine's own logs may go to stdout or stderr). Answers are {"ok": true, ...} or
{"ok": false, "error": "..."}. Addresses travel as decimal strings (they do not fit a JS number
reliably); Python turns them back into ints.

  {"cmd": "init", "mode": "p2p"}                       initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
  {"cmd": "init", "mode": "http", "name": n, "metadata_url": u}
                                                       initialize(n, u, "tcp", "")
      -> rpc_port, segment (the name peers open)
  {"cmd": "alloc", "size": n}                          allocate_managed_buffer -> addr
  {"cmd": "register", "size": n}                       malloc'd (ctypes) memory + register_memory -> addr
  {"cmd": "fill", "ranges": [[a, n], ...]}            random bytes -> sha256s of what the ranges hold
  {"cmd": "sha256", "ranges": [[a, n], ...]}          -> sha256s (hex) of the ranges
  {"cmd": "write", "addr": a, "hex": h}                write_bytes_to_buffer
  {"cmd": "read", "addr": a, "length": n}              read_bytes_from_buffer -> hex
  {"cmd": "first_buffer", "segment": s}                get_first_buffer_address -> addr
  {"cmd": "probe", "peer": s}                          send_probe (handshake Probe) -> ret
  {"cmd": "transfer", "target": s, "op": "write"|"read", "local": a, "remote": a, "length": n,
   "notify": {"name", "msg"} | null}                   transfer_sync -> ret (0 / -1)
  {"cmd": "batch", "target": s, "op": ..., "locals": [a], "remotes": [a], "lengths": [n],
   "notify": ... | null}                               batch_transfer_sync -> ret
  {"cmd": "notifies"}                                  get_notifies -> [{name, msg}]
  {"cmd": "npu_set_device", "device": n}               aclrtSetDevice(n) on the thread that runs init
  {"cmd": "npu_alloc", "size": n}                      aclrtMalloc + register_memory -> addr (NPU memory)
  {"cmd": "npu_fill" | "npu_sha256", "ranges": ...}   as fill / sha256, through aclrtMemcpy (NPU memory is
                                                       not addressable from the host)
  {"cmd": "exit"}
The npu_* commands load libascendcl.so (CANN's, or the tests' stand-in on LD_LIBRARY_PATH): the same
library the npu wheel links, as torch_npu would.
"""

import ctypes
import hashlib
import os
import sys
import time

sys.dont_write_bytecode = True  # importing peer_common must not leave a __pycache__ in the source tree
from peer_common import finish, init, reply, serve  # noqa: E402 (this directory is on sys.path)


def main():
    from mooncake.engine import TransferEngine, TransferNotify, TransferOpcode

    engine = TransferEngine()
    keep = []  # ctypes buffers registered with the engine stay alive until exit
    reply({"ok": True, "ready": True, "pid": os.getpid()})

    def notify_of(cmd):
        n = cmd.get("notify")
        return TransferNotify(n["name"], n["msg"]) if n else None

    def opcode(cmd):
        return TransferOpcode.Write if cmd["op"] == "write" else TransferOpcode.Read

    def sha(addr, length):
        return hashlib.sha256(bytes(engine.read_bytes_from_buffer(addr, length))).hexdigest()

    def alloc(cmd):
        addr = engine.allocate_managed_buffer(cmd["size"])
        return {"ok": addr != 0, "addr": str(addr)}

    def register(cmd):
        buf = ctypes.create_string_buffer(cmd["size"])
        addr = ctypes.addressof(buf)
        ret = engine.register_memory(addr, cmd["size"])
        keep.append(buf)
        return {"ok": ret == 0, "ret": ret, "addr": str(addr)}

    def fill(cmd):
        rets = [engine.write_bytes_to_buffer(int(a), os.urandom(n), n) for a, n in cmd["ranges"]]
        return {"ok": all(r == 0 for r in rets), "rets": rets, "sha256": [sha(int(a), n) for a, n in cmd["ranges"]]}

    def write(cmd):
        data = bytes.fromhex(cmd["hex"])
        ret = engine.write_bytes_to_buffer(int(cmd["addr"]), data, len(data))
        return {"ok": ret == 0, "ret": ret}

    def transfer(cmd):
        t0 = time.time()
        ret = engine.transfer_sync(cmd["target"], int(cmd["local"]), int(cmd["remote"]), cmd["length"],
                                   opcode(cmd), notify_of(cmd))
        return {"ok": True, "ret": ret, "seconds": time.time() - t0}

    def batch(cmd):
        t0 = time.time()
        ret = engine.batch_transfer_sync(cmd["target"], [int(a) for a in cmd["locals"]],
                                         [int(a) for a in cmd["remotes"]], cmd["lengths"],
                                         opcode(cmd), notify_of(cmd))
        return {"ok": True, "ret": ret, "seconds": time.time() - t0}

    acl = []  # libascendcl.so, loaded by the first npu_* command

    def npu():
        if not acl:
            acl.append(ctypes.CDLL("libascendcl.so"))
            acl[0].aclInit(None)
        return acl[0]

    def npu_copy(dst, src, n, kind):  # kind: 1 host to device, 2 device to host
        ret = npu().aclrtMemcpy(ctypes.c_void_p(dst), ctypes.c_size_t(n), ctypes.c_void_p(src), ctypes.c_size_t(n), kind)
        if ret != 0:
            raise RuntimeError("aclrtMemcpy failed: %d" % ret)

    def npu_sha(addr, length):
        buf = ctypes.create_string_buffer(length)
        npu_copy(ctypes.addressof(buf), addr, length, 2)
        return hashlib.sha256(buf.raw).hexdigest()

    def npu_alloc(cmd):
        p = ctypes.c_void_p()
        ret = npu().aclrtMalloc(ctypes.byref(p), ctypes.c_size_t(cmd["size"]), 0)
        if ret != 0:
            return {"ok": False, "error": "aclrtMalloc failed: %d" % ret}
        reg = engine.register_memory(p.value, cmd["size"])
        return {"ok": reg == 0, "ret": reg, "addr": str(p.value)}

    def npu_fill(cmd):
        out = []
        for a, n in cmd["ranges"]:
            data = os.urandom(n)
            npu_copy(int(a), ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value, n, 1)
            out.append(hashlib.sha256(data).hexdigest())
        return {"ok": True, "sha256": out}

    serve({
        "npu_set_device": lambda cmd: {"ok": npu().aclrtSetDevice(cmd["device"]) == 0},
        "npu_alloc": npu_alloc,
        "npu_fill": npu_fill,
        "npu_sha256": lambda cmd: {"ok": True, "sha256": [npu_sha(int(a), n) for a, n in cmd["ranges"]]},
        "init": lambda cmd: init(engine, cmd),
        "alloc": alloc,
        "register": register,
        "fill": fill,
        "sha256": lambda cmd: {"ok": True, "sha256": [sha(int(a), n) for a, n in cmd["ranges"]]},
        "write": write,
        "read": lambda cmd: {"ok": True, "hex": bytes(engine.read_bytes_from_buffer(int(cmd["addr"]), cmd["length"])).hex()},
        "first_buffer": lambda cmd: {"ok": True, "addr": str(engine.get_first_buffer_address(cmd["segment"]))},
        "probe": lambda cmd: {"ok": True, "ret": engine.send_probe(cmd["peer"])},
        "transfer": transfer,
        "batch": batch,
        "notifies": lambda cmd: {"ok": True, "notifies": [{"name": n.name, "msg": n.msg} for n in engine.get_notifies()]},
    })
    # Drop the engine first: its destructor deletes this peer's metadata entries (rpc_meta, ram).
    # Then skip the interpreter's own teardown, which has nothing left to do.
    engine = None  # noqa: F841
    finish()


if __name__ == "__main__":
    main()
