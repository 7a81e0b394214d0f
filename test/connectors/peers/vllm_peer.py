#!/usr/bin/env python3
"""A real vLLM MooncakeConnector rank (the released module, loaded by connector_loader.py) with the real
upstream engine (mooncake.engine, TCP, P2PHANDSHAKE), driven by JSON lines (peer_common.py protocol).

The connector's own classes do the work: MooncakeConnectorWorker (its __init__ creates the engine, the sender
or receiver loop and, on a prefill's rank 0, the real MooncakeBootstrapServer; its register_kv_caches
registers the caches and the sender's ROUTER with the bootstrap server; send_kv_to_decode writes, the decode's
receive path queries the bootstrap server and pulls over a DEALER) and MooncakeConnectorScheduler (the
params checks, request_finished, the connector metadata handed to the workers). This driver only builds their
inputs the way vLLM's engine would and reports what they did; it never answers a message itself.

Stand-ins (named as such): KV caches are `HostCache` objects, ctypes memory shaped like the
`[num_blocks, heads, block_size, content]` view vLLM registers for an LBHNC attention cache (the layout the
connector asks for); the attention-backend probes of the worker's __init__ return "no kernel block size of
its own"; the bootstrap server binds 127.0.0.1 instead of 0.0.0.0.

  {"cmd": "init", "dir": d, "host": "127.0.0.1"}
  {"cmd": "alloc_kv", "layers": L, "num_blocks": B, "heads": H, "block_size": N, "content": C (bytes per
   head and token: K then V), "fill": true}       -> tensors: one base address per layer (decimal strings)
  {"cmd": "read", "ranges": [[addr, n], ...]}     -> hex of each range
  {"cmd": "start", "role": "kv_producer"|"kv_consumer", "engine_id", "tp_rank", "tp_size", "total_heads",
   "block_size", "bootstrap_port"}                 -> rpc_port, side_channel_port (producer), bootstrap (rank 0)
  {"cmd": "prefill_begin", "request_id", "params"}          scheduler: a new request with do_remote_decode
  {"cmd": "prefill_finish", "request_id", "block_ids", "status"}  request_finished -> delay_free
  {"cmd": "decode_begin", "request_id", "params", "block_ids", "prompt_tokens"}  get_num_new_matched_tokens,
   update_state_after_alloc: the worker starts the pull
  {"cmd": "wait", "request_id", "kind": "send"|"recv", "timeout"} -> done, failed (recv), invalid_block_ids
  {"cmd": "stop"}                                   worker.shutdown()
  {"cmd": "plans", "cases": [{"prefill_tp", "decode_tp", "heads", "mla"}], "unit": bytes of one head's block}
      -> for each case: TransferTopology.handshake_target_ranks of every decode rank (targets) and prefill rank
         (requesters), and _compute_sender_transfer_plan for every (prefill rank, decode rank) that pair:
         [should_transfer, src offset, dst offset, length]
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


class HostCache:
    """Stand-in for the torch tensor vLLM registers per layer: `[num_blocks, heads, block_size, content]`
    bytes (element size 1), contiguous (LBHNC)."""

    def __init__(self, buf, num_blocks, heads, block_size, content):
        self.buf = buf
        self.shape = (num_blocks, heads, block_size, content)
        self.ndim = 4
        self._addr = ctypes.addressof(buf)
        self.page = heads * block_size * content

    def data_ptr(self):
        return self._addr

    def stride(self, dim):
        return [self.page, self.shape[2] * self.shape[3], self.shape[3], 1][dim]

    def element_size(self):
        return 1

    def untyped_storage(self):
        return NS(data_ptr=lambda: self._addr, nbytes=lambda: self.page * self.shape[0])

    def __getitem__(self, i):
        return NS(is_contiguous=lambda: True, nbytes=self.page)

    def is_contiguous(self):
        return True

    def storage_offset(self):
        return 0


class Rank:
    def __init__(self):
        self.mc = None
        self.caches = {}
        self.worker = None
        self.sched = None
        self.requests = {}
        self.done = {"send": set(), "recv": set(), "failed": set()}
        self.invalid = set()

    def init(self, cmd):
        self.parallel = connector_loader.install(cmd["dir"])
        import importlib

        self.host = cmd.get("host", "127.0.0.1")
        os.environ["VLLM_HOST_IP"] = self.host
        self.mc = importlib.import_module(connector_loader.VLLM_CONNECTOR)
        mc = self.mc
        # The worker's __init__ asks the attention backends for a kernel block size: none here.
        mc.get_current_attn_backends = lambda cfg: []
        mc.get_current_attn_backends_and_specs = lambda cfg, kv_cfg, backends: ([], [])
        mc.select_common_block_size = lambda block_size, backends, specs: block_size
        mc.check_compressed_kernel_split = lambda *a: None
        mc.extract_layer_index = connector_loader._extract_layer_index
        real_server = mc.MooncakeBootstrapServer
        mc.MooncakeBootstrapServer = lambda host, port: real_server("127.0.0.1", port)
        return {"ok": True, "pid": os.getpid()}

    def alloc_kv(self, cmd):
        self.caches = {}
        self.keep = []
        out = []
        for i in range(cmd["layers"]):
            size = cmd["num_blocks"] * cmd["heads"] * cmd["block_size"] * cmd["content"]
            buf = ctypes.create_string_buffer(size)
            if cmd.get("fill", True):
                ctypes.memmove(buf, os.urandom(size), size)
            self.keep.append(buf)
            cache = HostCache(buf, cmd["num_blocks"], cmd["heads"], cmd["block_size"], cmd["content"])
            self.caches["model.layers.%d.self_attn.attn" % i] = cache
            out.append(str(cache.data_ptr()))
        self.num_blocks = cmd["num_blocks"]
        self.heads = cmd["heads"]
        self.content = cmd["content"]
        return {"ok": True, "tensors": out, "page": self.caches["model.layers.0.self_attn.attn"].page}

    def read(self, cmd):
        return {"ok": True, "hex": [ctypes.string_at(int(a), n).hex() for a, n in cmd["ranges"]]}

    # --- vLLM's configuration objects, as much as the connector reads ------------------------------------
    def config(self, cmd):
        mc = self.mc
        extra = {"mooncake_protocol": "tcp", "num_workers": 2}

        def get_from_extra_config(key, default=None):
            return extra.get(key, default)

        class Spec(mc.FullAttentionSpec, mc.AttentionSpec):
            pass

        spec = Spec()
        spec.block_size = cmd["block_size"]
        spec.page_size_bytes = self.heads * cmd["block_size"] * self.content
        spec.unpadded_page_size_bytes = spec.page_size_bytes
        spec.prefix_replay_tokens = 0
        spec.kv_quant_mode = NS(is_nvfp4=False)
        names = list(self.caches)
        group = NS(kv_cache_spec=spec, layer_names=names)
        kv_cache_config = NS(
            transfer_groups=[group], kv_cache_groups=[group], transfer_group_ids=(0,), num_blocks=self.num_blocks,
            has_mamba_layers=False, transfer_group_index_by_layer={n: 0 for n in names}, hash_block_size=cmd["block_size"],
            select_transfer_block_ids=lambda block_ids: block_ids)
        total_heads = cmd["total_heads"]
        vllm_config = NS(
            kv_transfer_config=NS(kv_role=cmd["role"], engine_id=cmd["engine_id"], kv_connector_extra_config=extra,
                                  get_from_extra_config=get_from_extra_config),
            parallel_config=NS(data_parallel_index=cmd.get("dp_rank", 0), data_parallel_rank_local=cmd.get("dp_rank", 0),
                               local_engines_only=False, nnodes_within_dp=1, data_parallel_master_ip=self.host,
                               pipeline_parallel_size=1, tensor_parallel_size=cmd["tp_size"], master_addr=self.host),
            cache_config=NS(block_size=cmd["block_size"], enable_extensible_kv_cache=False),
            model_config=NS(use_mla=False, get_total_num_kv_heads=lambda: total_heads),
            scheduler_config=NS(disable_hybrid_kv_cache_manager=False),
            num_hash_lookahead_tokens=0,
        )
        return vllm_config, kv_cache_config

    def start(self, cmd):
        mc = self.mc
        self.parallel.tp_rank, self.parallel.tp_size = cmd["tp_rank"], cmd["tp_size"]
        os.environ["VLLM_MOONCAKE_BOOTSTRAP_PORT"] = str(cmd["bootstrap_port"])
        vllm_config, kv_cache_config = self.config(cmd)
        self.worker = mc.MooncakeConnectorWorker(vllm_config, cmd["engine_id"], kv_cache_config)
        self.worker.register_kv_caches(self.caches)
        self.sched = mc.MooncakeConnectorScheduler(vllm_config, cmd["engine_id"], kv_cache_config)
        server = getattr(self.worker, "bootstrap_server", None)
        return {"ok": True, "rpc_port": self.worker.rpc_port, "side_channel_port": self.worker.side_channel_port,
                "bootstrap": None if server is None else "http://127.0.0.1:%d" % server.port,
                "layout_id": self.worker._kv_layout_id}

    def request(self, cmd, params, prompt_tokens=0):
        req = self.requests.get(cmd["request_id"])
        if req is None:
            req = NS(request_id=cmd["request_id"], kv_transfer_params=params, prompt_token_ids=list(range(prompt_tokens)),
                     num_prompt_tokens=prompt_tokens, status=None, skip_reading_external_kv=False, prompt_embeds=None)
            self.requests[cmd["request_id"]] = req
        return req

    def step(self):
        """One engine step: the scheduler's connector metadata goes to the worker (start_load_kv)."""
        meta = self.sched.build_connector_meta(NS())
        self.worker.start_load_kv(meta)
        return meta

    # --- prefill -------------------------------------------------------------------------------------
    def prefill_begin(self, cmd):
        req = self.request(cmd, dict(cmd["params"]), cmd.get("prompt_tokens", 1))
        self.sched.on_new_request(req)
        self.sched.update_state_after_alloc(req, NS(), 0)
        meta = self.step()
        return {"ok": True, "to_send": sorted(meta.reqs_to_send)}

    def prefill_finish(self, cmd):
        req = self.requests[cmd["request_id"]]
        req.status = connector_loader.RequestStatus[cmd.get("status", "FINISHED_LENGTH_CAPPED")]
        delay, params = self.sched.request_finished(req, (list(cmd["block_ids"]),))
        meta = self.step()
        return {"ok": True, "delay_free": delay, "params": params, "not_processed": sorted(meta.reqs_not_processed)}

    # --- decode --------------------------------------------------------------------------------------
    def decode_begin(self, cmd):
        req = self.request(cmd, dict(cmd["params"]), cmd["prompt_tokens"])
        count, is_async = self.sched.get_num_new_matched_tokens(req, 0)
        blocks = list(cmd["block_ids"])
        self.sched.update_state_after_alloc(req, NS(get_unhashed_block_ids_all_groups=lambda: (blocks,)), count)
        meta = self.step()
        return {"ok": True, "matched": count, "async": is_async, "pulls": {k: sorted(v) for k, v in meta.reqs_to_recv.items()}}

    def wait(self, cmd):
        deadline = time.time() + cmd.get("timeout", 30)
        rid = cmd["request_id"]
        while True:
            r = self.worker.get_transfer_results()
            self.done["send"] |= set(r.finished_sending or ())
            self.done["recv"] |= set(r.finished_recving or ())
            self.done["failed"] |= set(r.failed_recving or ())
            self.invalid |= self.worker.get_block_ids_with_load_errors()
            if rid in self.done[cmd["kind"]] or time.time() >= deadline:
                return {"ok": True, "done": rid in self.done[cmd["kind"]], "failed": rid in self.done["failed"],
                        "invalid_block_ids": sorted(self.invalid)}
            time.sleep(0.01)

    def plans(self, cmd):
        import importlib

        mc = self.mc
        utils = importlib.import_module("vllm.distributed.kv_transfer.kv_connector.utils")
        unit = cmd["unit"]
        out = []
        for case in cmd["cases"]:
            ptp, dtp, heads, mla = case["prefill_tp"], case["decode_tp"], case["heads"], bool(case.get("mla"))

            def topo(rank, tp):
                return utils.TransferTopology(tp_rank=rank, tp_size=tp, block_size=16, engine_id="e", is_mla=mla, is_mamba=False,
                                              total_num_kv_heads=heads, attn_backends=[])

            targets = [topo(d, dtp).handshake_target_ranks(ptp) for d in range(dtp)]
            requesters = [topo(p, ptp).handshake_target_ranks(dtp) for p in range(ptp)]
            plen = (1 if mla else max(1, heads // ptp)) * unit
            dlen = (1 if mla else max(1, heads // dtp)) * unit
            sends = {}
            for p in range(ptp):
                for d in requesters[p]:
                    plan = mc._compute_sender_transfer_plan(p, ptp, d, dtp, plen, dlen, topo(p, ptp).local_replicates_kv_cache,
                                                            None if mla else heads)
                    sends["%d/%d" % (p, d)] = [bool(plan[0]), int(plan[1]), int(plan[2]), int(plan[3])]
            out.append({"targets": targets, "requesters": requesters, "sends": sends})
        return {"ok": True, "plans": out}

    def stop(self, cmd):
        if self.worker is not None:
            self.worker.shutdown()
        return {"ok": True}


def main():
    r = Rank()
    reply({"ok": True, "ready": True, "pid": os.getpid()})
    serve({name: getattr(r, name) for name in ("init", "alloc_kv", "read", "start", "prefill_begin", "prefill_finish",
                                              "decode_begin", "wait", "plans", "stop")})
    finish()


if __name__ == "__main__":
    main()
