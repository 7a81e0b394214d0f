#!/usr/bin/env python3
"""A real upstream Mooncake engine (mooncake.engine.TransferEngine), driven over stdin/stdout.

Used by test/interop/handshake-upstream.test.ts. One JSON command per stdin line; one answer per
command on stdout, as a line starting with "@@" (the engine's own logs go to stderr). Answers are
{"ok": true, ...} or {"ok": false, "error": "..."}. Commands:

  {"cmd": "init", "mode": "p2p"}                      initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
  {"cmd": "init", "mode": "http", "name": "seg", "metadata_url": url}
                                                      initialize(name, url, "tcp", "")
      -> rpc_port (get_rpc_port()), segment (the segment name peers use)
  {"cmd": "put_metadata", "url": u, "key": k, "value": text}   PUT a key on an HTTP metadata server
  {"cmd": "get_metadata", "url": u, "key": k}                  -> value (text) or null (404)
  {"cmd": "alloc", "size": n}                         allocate_managed_buffer -> addr
  {"cmd": "write", "addr": a, "hex": h}               write_bytes_to_buffer
  {"cmd": "read", "addr": a, "length": n}             read_bytes_from_buffer -> hex
  {"cmd": "probe", "peer": segment}                   send_probe -> ret
  {"cmd": "notifies"}                                 get_notifies -> [{name, msg}]
  {"cmd": "transfer", "target": seg, "addr": a, "peer_addr": p, "length": n,
   "op": "write"|"read", "notify": {"name", "msg"} | null}
                                                      transfer_sync(..., notify=TransferNotify(...)) -> ret
  {"cmd": "exit"}

The HTTP metadata server must be a separate process (the test starts upstream's
mooncake_http_metadata_server): initialize() holds the GIL, so a server inside this process could
not answer the engine's own PUTs.
"""

import sys
import time

sys.dont_write_bytecode = True  # importing peer_common must not leave a __pycache__ in the source tree
from peer_common import finish, init, reply, serve  # noqa: E402 (this directory is on sys.path)


def http(method, url, key, data=None):
    import urllib.error
    import urllib.parse
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url + "?key=" + urllib.parse.quote(key, safe=""), data=data, method=method)
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    from mooncake.engine import TransferEngine, TransferOpcode, TransferNotify

    engine = TransferEngine()
    reply({"ok": True, "ready": True})

    def put_metadata(cmd):
        status, body = http("PUT", cmd["url"], cmd["key"], cmd["value"].encode())
        return {"ok": status == 200, "status": status, "body": body.decode(errors="replace")}

    def get_metadata(cmd):
        status, body = http("GET", cmd["url"], cmd["key"])
        return {"ok": status in (200, 404), "status": status, "value": body.decode() if status == 200 else None}

    def alloc(cmd):
        addr = engine.allocate_managed_buffer(cmd["size"])
        return {"ok": addr != 0, "addr": addr}

    def write(cmd):
        data = bytes.fromhex(cmd["hex"])
        ret = engine.write_bytes_to_buffer(cmd["addr"], data, len(data))
        return {"ok": ret == 0, "ret": ret}

    def read(cmd):
        data = engine.read_bytes_from_buffer(cmd["addr"], cmd["length"])
        return {"ok": True, "hex": bytes(data).hex()}

    def transfer(cmd):
        op = TransferOpcode.Write if cmd["op"] == "write" else TransferOpcode.Read
        n = cmd.get("notify")
        notify = TransferNotify(n["name"], n["msg"]) if n else None
        t0 = time.time()
        ret = engine.transfer_sync(cmd["target"], cmd["addr"], cmd["peer_addr"], cmd["length"], op, notify)
        return {"ok": True, "ret": ret, "seconds": time.time() - t0}

    serve({
        "init": lambda cmd: init(engine, cmd),
        "put_metadata": put_metadata,
        "get_metadata": get_metadata,
        "alloc": alloc,
        "write": write,
        "read": read,
        "probe": lambda cmd: {"ok": True, "ret": engine.send_probe(cmd["peer"])},
        "notifies": lambda cmd: {"ok": True, "notifies": [{"name": n.name, "msg": n.msg} for n in engine.get_notifies()]},
        "transfer": transfer,
    })
    finish()


if __name__ == "__main__":
    main()
