#!/usr/bin/env python3
"""A real vllm-ascend MooncakeConnector rank (the released module, loaded by connector_loader.py) with the
real upstream engine (mooncake.engine, TCP, P2PHANDSHAKE), driven by JSON lines (peer_common.py protocol).
The connector's own classes do the work: KVCacheSendingThread (prefill side channel),
KVCacheRecvingThread (decode: GET_META, the batched read, DONE), MooncakeConnectorScheduler.request_finished
(the params), MooncakeConnectorWorker._get_remote_ranks_for_req (rank choice). This driver only builds
their inputs the way vLLM would and reports what they did; it never answers a message itself.

Also usable outside the tests (the KV benchmark times the real decode path with it).

  {"cmd": "init", "dir": d, "profile": "0.18"|"0.23", "host": "127.0.0.1"}   -> rpc_port (te_rpc_port)
  {"cmd": "alloc_kv", "layers": L, "per_layer": 2, "num_blocks": B, "block_len": n, "fill": true}
      registered ctypes memory, one region per tensor -> tensors [[addr]] per layer (decimal strings)
  {"cmd": "read", "ranges": [[addr, n], ...]}                 -> hex of each range
  {"cmd": "write", "addr": a, "hex": h}
  {"cmd": "start_sender", "engine_id", "tp_rank", "prefill_tp", "decode_tp", "heads", "mla",
   "side_channel_port", "block_size"}                          -> handshake_port
  {"cmd": "hold", "request_ids": [...]}    as start_load_kv on prefill: delayed (chosen) or freed (not chosen)
  {"cmd": "finished"}                      -> request ids done_sending (DONE received or force-freed)
  {"cmd": "start_receiver", "engine_id", "tp_rank", "prefill_tp", "decode_tp", "heads", "mla",
   "side_channel_port", "block_size"}
  {"cmd": "pull", "request_id", "remote_request_id", "local_block_ids", "remote_block_ids",
   "remote_engine_id", "remote_host", "remote_port", "prefill_tp"}       as start_load_kv on decode
  {"cmd": "wait_done", "request_id", "timeout"}  -> done (bool), invalid_block_ids (0.23)
  {"cmd": "request_finished", "engine_id", "kv_port", "tp_size", "dp_size", "dp_rank", "block_size",
   "request_id", "prompt_tokens", "output_token_ids", "status", "kv_transfer_params", "block_ids"}
  {"cmd": "ranks", "cases": [{"prefill_tp", "decode_tp", "heads", "mla"}], "ids": [...]}
      -> for each case, for each id, _get_remote_ranks_for_req(id) (one list of prefill ranks per decode rank)
"""

import ctypes
import os
import sys
import threading
import time
import types

sys.dont_write_bytecode = True
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "interop", "peers"))
sys.path.insert(0, here)
from peer_common import finish, reply, serve  # noqa: E402
import connector_loader  # noqa: E402

NS = types.SimpleNamespace


class Rank:
    def __init__(self):
        self.mc = None
        self.profile = None
        self.engine = None
        self.host = "127.0.0.1"
        self.keep = []
        self.tensors = []  # [layer][cache] addresses
        self.block_len = 0
        self.num_blocks = 0
        self.sender = None
        self.receiver = None
        self.worker = None

    # --- set-up ------------------------------------------------------------------------------------
    def init(self, cmd):
        self.parallel = connector_loader.install(cmd["dir"])
        import importlib

        self.mc = importlib.import_module("vllm_ascend.distributed.kv_transfer.kv_p2p.mooncake_connector")
        self.profile = cmd["profile"]
        self.host = cmd.get("host", "127.0.0.1")
        os.environ["VLLM_HOST_IP"] = self.host
        from mooncake.engine import TransferEngine

        self.engine = TransferEngine()
        ret = self.engine.initialize(self.host, "P2PHANDSHAKE", "tcp", "")
        return {"ok": ret == 0, "ret": ret, "rpc_port": self.engine.get_rpc_port(), "pid": os.getpid()}

    def alloc_kv(self, cmd):
        self.block_len = cmd["block_len"]
        self.num_blocks = cmd["num_blocks"]
        size = self.block_len * self.num_blocks
        self.tensors = []
        for _ in range(cmd["layers"]):
            layer = []
            for _ in range(cmd.get("per_layer", 2)):
                buf = ctypes.create_string_buffer(size)
                if cmd.get("fill", True):
                    ctypes.memmove(buf, os.urandom(size), size)
                addr = ctypes.addressof(buf)
                ret = self.engine.register_memory(addr, size)
                if ret != 0:
                    return {"ok": False, "error": "register_memory returned %d" % ret}
                self.keep.append(buf)
                layer.append(addr)
            self.tensors.append(layer)
        return {"ok": True, "tensors": [[str(a) for a in layer] for layer in self.tensors]}

    def read(self, cmd):
        return {"ok": True, "hex": [ctypes.string_at(int(a), n).hex() for a, n in cmd["ranges"]]}

    def write(self, cmd):
        data = bytes.fromhex(cmd["hex"])
        ctypes.memmove(int(cmd["addr"]), data, len(data))
        return {"ok": True}

    # --- vLLM objects the connector reads ------------------------------------------------------------
    def vllm_config(self, cmd, tp_size):
        heads = cmd.get("heads", 1)
        hf = NS(num_hidden_layers=len(self.tensors), num_key_value_heads=heads, head_dim=cmd.get("head_dim", 8),
                kv_lora_rank=cmd.get("head_dim", 8), qk_rope_head_dim=cmd.get("head_dim", 8), model_type="llama")
        return NS(
            model_config=NS(hf_text_config=hf, hf_config=hf, is_deepseek_mla=bool(cmd.get("mla")), use_mla=bool(cmd.get("mla"))),
            cache_config=NS(block_size=cmd.get("block_size", 16)),
            parallel_config=NS(pipeline_parallel_size=1, tensor_parallel_size=tp_size, data_parallel_size=cmd.get("dp_size", 1),
                               data_parallel_rank=cmd.get("dp_rank", 0), data_parallel_size_local=1, data_parallel_rank_local=0,
                               prefill_context_parallel_size=1, decode_context_parallel_size=1),
            kv_transfer_config=NS(kv_port=cmd.get("kv_port", 0), kv_role=cmd.get("role", "kv_producer")),
            scheduler_config=NS(disable_hybrid_kv_cache_manager=False),
            speculative_config=None,
        )

    def make_worker(self, cmd):
        """A MooncakeConnectorWorker holding just what its rank-choice methods read (the methods are real)."""
        mc = self.mc
        w = object.__new__(mc.MooncakeConnectorWorker)
        tp = cmd["decode_tp"] if cmd.get("role") == "kv_consumer" else cmd["prefill_tp"]
        w.vllm_config = self.vllm_config(cmd, tp)
        w._prefill_tp_size = cmd["prefill_tp"]
        w._decode_tp_size = cmd["decode_tp"]
        w._prefill_pp_size = 1
        w.num_key_value_heads = cmd.get("heads", 1)
        w.use_sparse = False
        w.use_mla = bool(cmd.get("mla"))
        w.tp_size = tp
        w.tp_rank = cmd.get("tp_rank", 0)
        w._is_hma_required = False
        w.kv_group2layeridx = {}
        if cmd.get("mla"):
            w.tp_num_need_pulls = 1
        else:
            d = max(1, w.num_key_value_heads // cmd["decode_tp"])
            p = max(1, w.num_key_value_heads // cmd["prefill_tp"])
            w.tp_num_need_pulls = d // p
        return w

    def metadata(self, cmd, handshake_port):
        """MooncakeAgentMetadata as register_kv_caches builds it for these tensors."""
        mc = self.mc
        get_ip = sys.modules["vllm.utils.network_utils"].get_ip
        if self.profile == "0.18":
            flat = [a for layer in self.tensors for a in layer]
            return mc.MooncakeAgentMetadata(engine_id=cmd["engine_id"], te_rpc_port=self.engine.get_rpc_port(),
                                            kv_caches_base_addr=flat, num_blocks=self.num_blocks, local_ip=get_ip())
        return mc.MooncakeAgentMetadata(
            engine_id=cmd["engine_id"], te_rpc_port=self.engine.get_rpc_port(),
            kv_group2layeridx=self.group2layeridx(cmd), block_size=cmd.get("block_size", 16),
            kv_caches_base_addr=[list(layer) for layer in self.tensors],
            block_size_scale=[[1] * len(layer) for layer in self.tensors], num_blocks=self.num_blocks,
            block_lens=[[self.block_len] * len(layer) for layer in self.tensors],
            block_strides=[[self.block_len] * len(layer) for layer in self.tensors],
            local_ip=get_ip(), handshake_port=handshake_port)

    def group2layeridx(self, cmd):
        mc = self.mc
        names = ["model.layers.%d.self_attn.attn" % i for i in range(len(self.tensors))]
        spec = (mc.MLAAttentionSpec if cmd.get("mla") else mc.FullAttentionSpec)()
        spec.num_kv_heads = max(1, cmd.get("heads", 1) // cmd["prefill_tp"])
        spec.block_size = cmd.get("block_size", 16)
        group = NS(layer_names=names, kv_cache_spec=spec)
        serialized = mc.MooncakeConnectorWorker._serialize_kv_group_spec(group, names, spec, 0, cmd.get("heads", 1))
        return {0: (serialized, list(range(len(self.tensors))))}

    # --- prefill -------------------------------------------------------------------------------------
    def start_sender(self, cmd):
        mc = self.mc
        self.parallel.tp_rank, self.parallel.tp_size = cmd["tp_rank"], cmd["prefill_tp"]
        cmd = dict(cmd, role="kv_producer")
        self.worker = self.make_worker(cmd)
        handshake_port = cmd["side_channel_port"] + cmd["tp_rank"]
        ready = threading.Event()
        self.sender = mc.KVCacheSendingThread(self.vllm_config(cmd, cmd["prefill_tp"]), cmd["tp_rank"], cmd["prefill_tp"],
                                              cmd["engine_id"], self.host, cmd["side_channel_port"],
                                              self.metadata(cmd, handshake_port), ready, {}, 0)
        self.sender.start()
        if not ready.wait(10):
            return {"ok": False, "error": "KVCacheSendingThread did not start"}
        return {"ok": True, "handshake_port": handshake_port}

    def hold(self, cmd):
        chosen = {}
        for rid in cmd["request_ids"]:
            self.sender.task_tracker.add_req_to_process(rid)
            if self.worker.tp_rank in self.worker._prefill_get_remote_rank(rid):
                self.sender.add_delayed_request(rid, time.time())
                chosen[rid] = True
            else:
                self.sender.add_not_transfer_request(rid)
                chosen[rid] = False
        return {"ok": True, "chosen": chosen}

    def finished(self, cmd):
        return {"ok": True, "finished": sorted(self.sender.get_and_clear_finished_requests())}

    # --- decode --------------------------------------------------------------------------------------
    def start_receiver(self, cmd):
        mc = self.mc
        self.parallel.tp_rank, self.parallel.tp_size = cmd["tp_rank"], cmd["decode_tp"]
        cmd = dict(cmd, role="kv_consumer")
        self.worker = self.make_worker(cmd)
        cfg = self.vllm_config(cmd, cmd["decode_tp"])
        port = cmd["side_channel_port"] + cmd["tp_rank"]
        ready = threading.Event()
        if self.profile == "0.18":
            flat = [a for layer in self.tensors for a in layer]
            caches = {"model.layers.%d.self_attn.attn" % i: tuple(None for _ in layer) for i, layer in enumerate(self.tensors)}
            self.receiver = mc.KVCacheRecvingThread(cmd["tp_rank"], cmd["decode_tp"], 1, self.engine, cmd["engine_id"], port,
                                                    cmd["side_channel_port"], flat, [self.block_len], ready, cfg, caches, None)
        else:
            lens = [[self.block_len] * len(layer) for layer in self.tensors]
            self.receiver = mc.KVCacheRecvingThread(cmd["tp_rank"], cmd["decode_tp"], 1, self.engine, cmd["engine_id"], port,
                                                    cmd["side_channel_port"], [list(layer) for layer in self.tensors], lens, lens,
                                                    False, ready, cfg, {}, None, self.group2layeridx(cmd),
                                                    [[1] * len(layer) for layer in self.tensors])
        self.receiver.start()
        if not ready.wait(10):
            return {"ok": False, "error": "KVCacheRecvingThread did not start"}
        return {"ok": True}

    def pull(self, cmd):
        """What start_load_kv does for one request (pcp = dcp = pp = 1): the real rank choice, one task per
        prefill rank to read from."""
        w = self.worker
        ptp = cmd.get("prefill_tp") or w._prefill_tp_size
        rid = cmd["request_id"]
        chosen = w._get_remote_rank(cmd["remote_request_id"], ptp)
        n = w._get_tp_num_need_pulls(ptp)
        self.receiver.task_tracker.add_req_to_process(rid)
        for i in range(n):
            common = dict(request_id=rid, remote_request_id=cmd["remote_request_id"], remote_engine_id=cmd["remote_engine_id"],
                          remote_host=cmd["remote_host"], remote_handshake_port=cmd["remote_port"] + chosen[i])
            if self.profile == "0.18":
                self.receiver.add_request(local_block_ids=cmd["local_block_ids"], remote_block_ids=cmd["remote_block_ids"],
                                          offset=i, tp_num_need_pulls=n, all_task_done=(i == n - 1), **common)
            else:
                pulls = [self.mc.GroupPull(group_id=0, remote_tp_offset=i, num_group_pulls=n, is_group_transfer_end=(i == n - 1))]
                self.receiver.add_request(local_block_ids=[cmd["local_block_ids"]], remote_block_ids=[cmd["remote_block_ids"]],
                                          group_pulls=pulls, remote_block_size=cmd.get("remote_block_size"),
                                          all_task_done=(i == n - 1), **common)
        return {"ok": True, "prefill_ranks": chosen, "tp_num_need_pulls": n}

    def wait_done(self, cmd):
        deadline = time.time() + cmd.get("timeout", 30)
        invalid = set()
        while time.time() < deadline:
            done = self.receiver.get_and_clear_finished_requests()
            if hasattr(self.receiver, "get_and_clear_invalid_block_ids"):
                invalid |= self.receiver.get_and_clear_invalid_block_ids()
            if cmd["request_id"] in done:
                return {"ok": True, "done": True, "invalid_block_ids": sorted(invalid)}
            time.sleep(0.02)
        return {"ok": True, "done": False, "invalid_block_ids": sorted(invalid)}

    # --- scheduler -----------------------------------------------------------------------------------
    def request_finished(self, cmd):
        mc = self.mc
        cfg = self.vllm_config(dict(cmd, kv_port=cmd["kv_port"]), cmd["tp_size"])
        if self.profile == "0.18":
            sched = mc.MooncakeConnectorScheduler(cfg, cmd["engine_id"])
            block_ids = cmd["block_ids"]
        else:
            group = NS(kv_cache_spec=mc.FullAttentionSpec(), layer_names=["model.layers.0.self_attn.attn"])
            sched = mc.MooncakeConnectorScheduler(cfg, cmd["engine_id"], NS(kv_cache_groups=[group]))
            block_ids = (cmd["block_ids"],)
        req = NS(request_id=cmd["request_id"], kv_transfer_params=cmd["kv_transfer_params"],
                 status=connector_loader.RequestStatus[cmd.get("status", "FINISHED_LENGTH_CAPPED")],
                 prompt_token_ids=list(range(cmd["prompt_tokens"])), output_token_ids=cmd.get("output_token_ids", [42]))
        delay, params = sched.request_finished(req, block_ids)
        if params is not None and isinstance(params.get("remote_block_ids"), tuple):
            params["remote_block_ids"] = [list(g) for g in params["remote_block_ids"]]
        return {"ok": True, "delay_free": delay, "params": params}

    def ranks(self, cmd):
        table = []
        for case in cmd["cases"]:
            w = self.make_worker(dict(case, role="kv_consumer"))
            table.append([w._get_remote_ranks_for_req(rid) for rid in cmd["ids"]])
        return {"ok": True, "table": table}


def main():
    r = Rank()
    reply({"ok": True, "ready": True, "pid": os.getpid()})
    serve({name: getattr(r, name) for name in (
        "init", "alloc_kv", "read", "write", "start_sender", "hold", "finished", "start_receiver", "pull", "wait_done",
        "request_finished", "ranks")})
    finish()


if __name__ == "__main__":
    main()
