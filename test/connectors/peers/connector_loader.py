#!/usr/bin/env python3
"""Loads released connector modules (vllm-ascend's, extracted by scripts/setup-connectors.sh) on a machine
without torch, torch_npu, vllm or an NPU, the way vllm-ascend's own CPU unit tests do: an import hook returns
stand-in modules for those packages. The connector code itself, msgspec, pyzmq, numpy and `mooncake.engine`
(the upstream wheel's engine) are the real ones.

Stand-in modules: any attribute whose name starts with a capital letter is a real, empty class taking any
constructor arguments (so the connector can subclass it and isinstance() works); any other attribute is a
MagicMock. What the side channel
and the transfer path actually call gets a real implementation below (REAL), so a stand-in never decides an
outcome silently.

    connector_loader.py --check <dir>    imports the connector modules found in <dir>, prints what loaded
"""

import enum
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import types
from unittest import mock

STUBBED = ("torch", "torch_npu", "vllm", "vllm_ascend", "httpx")  # httpx: the layerwise scheduler's metaserver POST, not driven here
# vllm_ascend modules that are real files (extracted); every other vllm_ascend module is a stand-in.
REAL_VLLM_ASCEND = (
    "vllm_ascend",
    "vllm_ascend.distributed",
    "vllm_ascend.distributed.kv_transfer",
    "vllm_ascend.distributed.kv_transfer.kv_p2p",
    "vllm_ascend.distributed.kv_transfer.utils",
)


class RequestStatus(enum.IntEnum):
    """vLLM's request states the connector compares against (values as in vllm.v1.request)."""

    WAITING = 0
    WAITING_FOR_FSM = 1
    WAITING_FOR_REMOTE_KVS = 2
    RUNNING = 3
    PREEMPTED = 4
    FINISHED_STOPPED = 5
    FINISHED_LENGTH_CAPPED = 6
    FINISHED_ABORTED = 7
    FINISHED_IGNORED = 8


class _Envs(types.ModuleType):
    """vllm.envs: the abort timeout is read at every check, so tests can shorten it."""

    def __getattr__(self, name):
        if name == "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT":
            return float(os.environ.get("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "480"))
        return mock.MagicMock(name="vllm.envs." + name)


class _Parallel:
    """tp/pp/pcp/dcp state of the one rank this process plays (set by the driver)."""

    tp_rank = 0
    tp_size = 1


def _group(rank=0, size=1):
    return types.SimpleNamespace(rank_in_group=rank, world_size=size)


def _make_zmq_socket(ctx, path, socket_type, bind=None, identity=None, linger=None):
    s = ctx.socket(socket_type)
    if identity is not None:
        s.setsockopt(__import__("zmq").IDENTITY, identity)
    if linger is not None:
        s.setsockopt(__import__("zmq").LINGER, linger)
    if bind:
        s.bind(path)
    else:
        s.connect(path)
    return s


def _get_pp_indices(num_layers, pp_rank, pp_size):
    per = num_layers // pp_size
    start = pp_rank * per
    return start, (num_layers if pp_rank == pp_size - 1 else start + per)


def _extract_layer_index(layer_name, num_attn_module=1):
    nums = [int(x) for x in layer_name.split(".") if x.isdigit()]
    assert len(nums) == 1, "layer name %s has %d integers" % (layer_name, len(nums))
    return nums[0] // num_attn_module


ASCEND_CONFIG = types.SimpleNamespace(enable_kv_nz=False, pd_tp_ratio=1, pd_head_ratio=1, num_head_replica=1)

REAL = {
    "vllm.logger": {"logger": logging.getLogger("vllm"), "init_logger": logging.getLogger},
    "vllm.envs": None,  # _Envs
    "vllm.v1.request": {"RequestStatus": RequestStatus},
    "vllm.utils.network_utils": {
        "get_ip": lambda: os.environ.get("VLLM_HOST_IP", "127.0.0.1"),
        "make_zmq_path": lambda scheme, host, port=None: "%s://%s" % (scheme, host) if port is None else "%s://%s:%d" % (scheme, host, port),
        "make_zmq_socket": _make_zmq_socket,
    },
    "vllm.utils.math_utils": {"cdiv": lambda a, b: -(-a // b), "round_down": lambda a, b: a // b * b},
    "vllm.distributed.utils": {"get_pp_indices": _get_pp_indices},
    "vllm.v1.worker.utils": {"extract_layer_index": _extract_layer_index},
    "vllm.distributed.parallel_state": {
        "get_tensor_model_parallel_rank": lambda: _Parallel.tp_rank,
        "get_tensor_model_parallel_world_size": lambda: _Parallel.tp_size,
        "get_tp_group": lambda: _group(_Parallel.tp_rank, _Parallel.tp_size),
        "get_pp_group": lambda: _group(),
        "get_decode_context_model_parallel_rank": lambda: 0,
        "get_decode_context_model_parallel_world_size": lambda: 1,
    },
    "vllm.distributed": {"get_pcp_group": lambda: _group(), "get_pp_group": lambda: _group(), "get_tp_group": lambda: _group(_Parallel.tp_rank, _Parallel.tp_size)},
    "vllm_ascend.ascend_config": {"get_ascend_config": lambda: ASCEND_CONFIG, "init_ascend_config": lambda *a, **k: ASCEND_CONFIG},
    "vllm_ascend.utils": {"enable_custom_op": lambda: False, "is_vl_model": lambda *a: False, "enable_sfa_dcp_replicated_indexer": lambda *a: False},
    "vllm_ascend.envs": {"VLLM_ASCEND_FUSION_OP_TRANSPOSE_KV_CACHE_BY_BLOCK": False},
    "vllm_ascend.distributed.utils": {
        "get_decode_context_model_parallel_rank": lambda: 0,
        "get_decode_context_model_parallel_world_size": lambda: 1,
    },
    "vllm_ascend.distributed.parallel_state": {"get_p_tp_group": lambda: _group()},
}


def _accept_anything(self, *args, **kwargs):
    """Stand-in classes take any constructor arguments (httpx.Limits(max_connections=...), ...)."""


class _StandIn(types.ModuleType):
    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []  # a package: submodules are stand-ins too

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        sub = "%s.%s" % (self.__name__, attr)
        if sub in REAL:  # `from vllm import envs` asks the package for its module
            import importlib

            return importlib.import_module(sub)
        value = type(attr, (), {"__init__": _accept_anything}) if attr[:1].isupper() else mock.MagicMock(name="%s.%s" % (self.__name__, attr))
        setattr(self, attr, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in STUBBED or fullname in REAL_VLLM_ASCEND:
            return None
        if fullname.startswith("vllm_ascend.distributed.kv_transfer.") and importlib.machinery.PathFinder.find_spec(fullname, path):
            return None  # an extracted file: the real module
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        if spec.name == "vllm.envs":
            return _Envs(spec.name)
        m = _StandIn(spec.name)
        for k, v in (REAL.get(spec.name) or {}).items():
            setattr(m, k, v)
        return m

    def exec_module(self, module):
        pass


def install(connector_dir):
    """Stubs torch/torch_npu/vllm (and the vllm_ascend modules not extracted) and puts `connector_dir` first
    on sys.path. Returns the parallel-state holder the driver sets (tp rank and size of this process)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    sys.path.insert(0, os.path.abspath(connector_dir))
    return _Parallel


def load(connector_dir, module):
    """Imports e.g. 'kv_p2p.mooncake_connector' from the release in `connector_dir`."""
    install(connector_dir)
    import importlib

    return importlib.import_module("vllm_ascend.distributed.kv_transfer." + module)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--check":
        sys.exit(__doc__)
    sys.dont_write_bytecode = True
    loaded = []
    for name in ("kv_p2p.mooncake_connector", "kv_p2p.mooncake_layerwise_connector"):
        mod = load(sys.argv[2], name)
        assert hasattr(mod, "MooncakeAgentMetadata"), name
        loaded.append(name.split(".")[-1])
    import mooncake.engine  # noqa: F401  (the real engine must import too)

    print("loaded " + ", ".join(loaded) + " with the real mooncake.engine")
