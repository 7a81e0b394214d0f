"""What the upstream-engine peer scripts share (handshake_peer.py, te_peer.py and
test/fixtures/metadata_upstream_peer.py): the JSON-lines loop and the "init" command.

One JSON command per stdin line; one answer per command on stdout, as a line starting with "@@"
(the engine's own logs may go to stdout or stderr). Answers are {"ok": true, ...} or
{"ok": false, "error": "..."}; {"cmd": "exit"} (or stdin closing) ends the loop.
"""

import json
import os
import sys
import traceback


def reply(obj):
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(handlers):
    """Answers every command with handlers[cmd["cmd"]](cmd) (a dict) until "exit" or the end of stdin.

    Every failure, an exception included, goes back to the test as {"ok": false, "error": ...}.
    """
    while True:
        line = sys.stdin.readline()
        if not line:
            break  # stdin closed: the test is done with us
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            c = cmd["cmd"]
            if c == "exit":
                reply({"ok": True})
                break
            if c in handlers:
                reply(handlers[c](cmd))
            else:
                reply({"ok": False, "error": "unknown command " + c})
        except Exception as e:  # noqa: BLE001 - report everything to the test
            reply({"ok": False, "error": "%s: %s" % (type(e).__name__, e), "trace": traceback.format_exc()})


def finish():
    """Ends the process. The test only needs it gone; the native engine's teardown in the interpreter
    is skipped (drop the engine before this if its destructor must run)."""
    sys.stdout.flush()
    os._exit(0)


def init(engine, cmd):
    """{"cmd": "init", "mode": "p2p"}: initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "");
    {"cmd": "init", "mode": "http", "name": n, "metadata_url": u}: initialize(n, u, "tcp", "").
    "protocol" replaces "tcp" when given (e.g. "ascend", as vllm-ascend passes).
    -> ret, rpc_port, segment (the name peers open)"""
    protocol = cmd.get("protocol", "tcp")
    if cmd["mode"] == "p2p":
        ret = engine.initialize("127.0.0.1", "P2PHANDSHAKE", protocol, "")
        port = engine.get_rpc_port()
        return {"ok": ret == 0, "ret": ret, "rpc_port": port, "segment": "127.0.0.1:%d" % port}
    ret = engine.initialize(cmd["name"], cmd["metadata_url"], protocol, "")
    return {"ok": ret == 0, "ret": ret, "rpc_port": engine.get_rpc_port(), "segment": cmd["name"]}
