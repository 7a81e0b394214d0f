#!/usr/bin/env python3
"""A real vllm-ascend MooncakeConnector rank (the released module, loaded by connector_loader.py) with the
real upstream engine (mooncake.engine, TCP, P2PHANDSHAKE), driven by JSON lines (peer_common.py protocol).
The connector's own classes do the work: KVCacheSendingThread (prefill side channel),
KVCacheRecvingThread (decode: GET_META, the batched read, DONE), MooncakeConnectorScheduler.request_finished
(the params), MooncakeConnectorWorker._get_remote_ranks_for_req (rank choice). This driver only builds
their inputs the way vLLM would and reports what they did; it never answers a message itself.

Also usable outside the tests (the KV benchmark times the real decode path with it).

  {"cmd": "init", "dir": d, "profile": "0.18"|"0.23", "host": "127.0.0.1"}   -> rpc_port (te_rpc_port)
  {"cmd": "alloc_kv", "layers": L, "per_layer": 2, "num_blocks": B, "block_len": n, "block_lens": [n, m], "fill": true}
      registered ctypes memory, one region per tensor (block_lens: per cache of a layer, e.g. MLA's
      nope and rope; default block_len for each) -> tensors [[addr]] per layer (decimal strings)
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
  {"cmd": "wait_done", "request_id", "timeout"}  -> done (bool), invalid_block_ids (0.23), seconds (since pull)
  {"cmd": "request_finished", "engine_id", "kv_port", "tp_size", "dp_size", "dp_rank", "block_size",
   "request_id", "prompt_tokens", "output_token_ids", "status", "kv_transfer_params", "block_ids"}
  {"cmd": "ranks", "cases": [{"prefill_tp", "decode_tp", "heads", "mla"}], "ids": [...]}
      -> for each case, for each id, _get_remote_ranks_for_req(id) (one list of prefill ranks per decode rank)

MooncakeLayerwiseConnector (push):
  {"cmd": "start_layer_receiver", "engine_id", "tp_rank", "decode_tp", "side_channel_port"}
      KVCacheRecvingLayerThread: the decode's ROUTER (GET_META with layer metadata, DONE/FAILED_SENDING)
  {"cmd": "layer_done", "request_id", "timeout"}   -> done / failed (as its get_finished sees them)
  {"cmd": "layer_params", "engine_id", "kv_port", "tp_size", "block_size", "request_id", "block_ids",
   "prompt_tokens"}   the decode scheduler's update_state_after_alloc -> the params it posts to the metaserver
  {"cmd": "layer_push", "engine_id", "tp_rank", "prefill_tp", "side_channel_port", "request_id", "params",
   "local_block_ids"}   the prefill: update_decoder_info (GET_META), then KVCacheSendingLayerThread's
   _transfer_kv_cache for every layer in order (batch_transfer_sync_write), DONE_SENDING after the last
   -> te_rpc_port, seconds (from the command to DONE_SENDING sent: GET_META and every layer's write)
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
        self.pull_started = {}  # request id -> perf_counter at pull (timings for benchmarks)

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
        self.block_lens = cmd.get("block_lens") or [cmd["block_len"]] * cmd.get("per_layer", 2)
        self.block_len = self.block_lens[0]
        self.num_blocks = cmd["num_blocks"]
        self.tensors = []
        for _ in range(cmd["layers"]):
            layer = []
            for k in range(len(self.block_lens)):
                size = self.block_lens[k] * self.num_blocks
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
            block_lens=[list(self.block_lens) for _ in self.tensors],
            block_strides=[list(self.block_lens) for _ in self.tensors],
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
            # register_kv_caches' block_len: one entry (MHA), or nope and rope (MLA: the "use_mla" signal)
            block_len = list(self.block_lens) if cmd.get("mla") else [self.block_len]
            self.receiver = mc.KVCacheRecvingThread(cmd["tp_rank"], cmd["decode_tp"], 1, self.engine, cmd["engine_id"], port,
                                                    cmd["side_channel_port"], flat, block_len, ready, cfg, caches, None)
        else:
            lens = [list(self.block_lens) for _ in self.tensors]
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
        self.pull_started[rid] = time.perf_counter()
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
                started = self.pull_started.pop(cmd["request_id"], None)
                seconds = None if started is None else time.perf_counter() - started
                return {"ok": True, "done": True, "invalid_block_ids": sorted(invalid), "seconds": seconds}
            time.sleep(0.0005)  # fine enough for timings (the KV benchmark's real-decode baseline)
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

    # --- layerwise (push) ----------------------------------------------------------------------------
    def lw(self):
        import importlib

        return importlib.import_module("vllm_ascend.distributed.kv_transfer.kv_p2p.mooncake_layerwise_connector")

    def layer_names(self):
        return ["model.layers.%d.self_attn.attn" % i for i in range(len(self.tensors))]

    def layer_metadata(self):
        lw = self.lw()
        return {name: lw.LayerMetadata([0] * len(layer), list(layer), [self.block_len] * len(layer), [1] * len(layer))
                for name, layer in zip(self.layer_names(), self.tensors)}

    def start_layer_receiver(self, cmd):
        lw = self.lw()
        self.parallel.tp_rank, self.parallel.tp_size = cmd["tp_rank"], cmd["decode_tp"]
        meta = lw.MooncakeAgentMetadata(te_rpc_port=self.engine.get_rpc_port(), layer_metadata=self.layer_metadata())
        ready = threading.Event()
        self.layer_receiver = lw.KVCacheRecvingLayerThread(cmd["tp_rank"], cmd["side_channel_port"], cmd["decode_tp"], 1,
                                                           cmd["engine_id"], meta, ready)
        self.layer_receiver.start()
        if not ready.wait(10):
            return {"ok": False, "error": "KVCacheRecvingLayerThread did not start"}
        self.layer_seen = {"done": set(), "failed": set()}
        return {"ok": True, "handshake_port": cmd["side_channel_port"] + cmd["tp_rank"]}

    def layer_done(self, cmd):
        deadline = time.time() + cmd.get("timeout", 30)
        r, seen = self.layer_receiver, self.layer_seen
        while True:
            if hasattr(r, "get_and_clear_done_requests"):
                seen["done"] |= r.get_and_clear_done_requests()
                seen["failed"] |= r.get_and_clear_failed_requests()
            else:
                seen["done"] |= r.get_and_clear_finished_requests()
            rid = cmd["request_id"]
            if rid in seen["done"] or rid in seen["failed"] or time.time() >= deadline:
                return {"ok": True, "done": rid in seen["done"], "failed": rid in seen["failed"]}
            time.sleep(0.02)

    def layer_params(self, cmd):
        lw = self.lw()
        cfg = self.vllm_config(dict(cmd, kv_port=cmd["kv_port"], role="kv_consumer"), cmd["tp_size"])
        cfg.kv_transfer_config.is_kv_consumer = True
        cfg.kv_transfer_config.is_kv_producer = False
        cfg.kv_transfer_config.get_from_extra_config = lambda key, default=None: default
        spec = lw.FullAttentionSpec()
        spec.block_size = cmd.get("block_size", 16)
        sched = lw.MooncakeLayerwiseConnectorScheduler(cfg, NS(kv_cache_groups=[NS(kv_cache_spec=spec, layer_names=self.layer_names())]), cmd["engine_id"])
        posted = []
        sched._access_metaserver = lambda url, message: posted.append((url, message))
        req = NS(request_id=cmd["request_id"], kv_transfer_params={"do_remote_prefill": True, "metaserver": "http://127.0.0.1:1/v1/metaserver"},
                 prompt_token_ids=list(range(cmd["prompt_tokens"])), num_computed_tokens=0, prompt_embeds=None)
        blocks = NS(get_block_ids=lambda: (list(cmd["block_ids"]),), get_unhashed_block_ids=lambda: list(cmd["block_ids"]))
        sched.update_state_after_alloc(req, blocks, len(cmd["block_ids"]) * cmd.get("block_size", 16))
        sched.executor.shutdown(wait=True)
        if len(posted) != 1:
            return {"ok": False, "error": "the scheduler posted %d messages" % len(posted)}
        message = posted[0][1]
        message["remote_block_ids"] = [list(g) for g in message["remote_block_ids"]]
        return {"ok": True, "params": message, "metaserver": posted[0][0]}

    def layer_push(self, cmd):
        started = time.perf_counter()
        lw = self.lw()
        import collections
        import msgspec
        import zmq

        self.parallel.tp_rank, self.parallel.tp_size = cmd["tp_rank"], cmd["prefill_tp"]
        p = cmd["params"]
        w = object.__new__(lw.MooncakeLayerwiseConnectorWorker)
        w.engine, w.engine_id, w.local_engine_id, w.pd_head_ratio, w.timeout = self.engine, cmd["engine_id"], cmd["engine_id"], 1, 1.0
        w.layer_metadata = self.layer_metadata()
        w.remote_layer_metadata, w.remote_te_port = lw.SizedDict(), lw.SizedDict()
        w.encoder, w.decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(lw.MooncakeAgentMetadata)
        w.remote_sockets_lock, w.remote_sockets, w.remote_poller = threading.Lock(), collections.defaultdict(collections.deque), zmq.Poller()
        w.side_channel_host, w.handshake_port = self.host, cmd["side_channel_port"] + cmd["tp_rank"]
        decode_rank = cmd["tp_rank"]  # equal TP: prefill rank r writes decode rank r (remote_port + tp_rank // tp_ratio)
        req_meta = lw.ReqMeta(
            local_block_ids=[list(cmd["local_block_ids"])], token_ids=None, remote_block_ids=[list(g) for g in p["remote_block_ids"]],
            remote_block_size=p["remote_block_size"], remote_engine_id=p["remote_engine_id"], remote_host=p["remote_host"],
            remote_port=p["remote_port"] + decode_rank, remote_te_rpc_port=None, remote_layer_metadata=None, metaserver=None,
            remote_tp_size=p["remote_tp_size"], remote_pcp_size=1, remote_dcp_size=1, chunk_finish=True, trans_count=[1])
        internal_id = p["request_id"] + "-" + "0" * 8  # vLLM's engine-core suffix (9 characters), stripped on the wire
        w.update_decoder_info(internal_id, req_meta)
        cfg = self.vllm_config(dict(cmd, role="kv_producer"), cmd["prefill_tp"])
        cfg.cache_config.mamba_cache_mode = "none"
        spec = lw.FullAttentionSpec()
        kwargs = dict(engine=self.engine, vllm_config=cfg, kv_cache_config=NS(kv_cache_groups=[]), kv_cache_specs=[spec],
                      attn_resharding_group_idx=set(), total_layers=len(self.tensors), ready_event=threading.Event(),
                      tp_size=cmd["prefill_tp"], tp_rank=cmd["tp_rank"], pd_head_ratio=1, num_head_replica=1,
                      layer_metadata=w.layer_metadata, use_mla=False, use_attn_mamba_hybrid=False, k_buffer=None, v_buffer=None,
                      enable_kv_quant=False, resharding_stream=None, callback_func=w.send_done_send_signal)
        if self.profile == "0.18":
            kwargs.update(k_quant_buffer=None, v_quant_buffer=None)
        else:
            kwargs.update(enable_c8_quant=False)
        sender = lw.KVCacheSendingLayerThread(**kwargs)
        waited = NS(synchronize=lambda: None)  # the layer's compute event: nothing to wait for on a CPU
        for i, name in enumerate(self.layer_names()):
            sender._transfer_kv_cache(lw.SendTask(send_request={internal_id: req_meta}, wait_event=waited, layer_idx=i, layer_name=name))
        return {"ok": True, "te_rpc_port": req_meta.remote_te_rpc_port, "seconds": time.perf_counter() - started}

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
        "request_finished", "ranks", "start_layer_receiver", "layer_done", "layer_params", "layer_push")})
    finish()


if __name__ == "__main__":
    main()
