#!/usr/bin/env python3
"""Loads released connector modules (vllm-ascend's and vLLM's, extracted by scripts/setup-connectors.sh) on a
machine without torch, torch_npu, vllm or an NPU, the way vllm-ascend's own CPU unit tests do: an import hook
returns stand-in modules for those packages. Every module whose file was extracted into the connector directory
is the real one (the connector code, and for vLLM the few helper modules it needs); so are msgspec, pyzmq,
numpy, httpx, fastapi/uvicorn/pydantic (vLLM's bootstrap server) and `mooncake.engine` (the upstream wheel's
engine).

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

# Packages whose modules are stand-ins unless their file was extracted into the connector directory.
# vllm-ascend's connectors import httpx for the layerwise scheduler's metaserver POST (not driven here);
# vLLM's takes httpx from huggingface_hub.utils (the real httpx, see REAL).
STUBBED = ("torch", "torch_npu", "vllm", "vllm_ascend", "huggingface_hub", "prometheus_client")
STUBBED_ASCEND = STUBBED + ("httpx",)
_stubbed = STUBBED
_connector_dir = None


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


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() else value


class _Envs(types.ModuleType):
    """vllm.envs: timeouts and the bootstrap port are read at every use, so tests can set them (defaults
    as vLLM's)."""

    DEFAULTS = {
        "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT": "480",
        "VLLM_MOONCAKE_CONNECTOR_TIMEOUT": "30",
        "VLLM_MOONCAKE_BOOTSTRAP_PORT": "8998",
    }

    def __getattr__(self, name):
        if name in self.DEFAULTS:
            return _number(os.environ.get(name, self.DEFAULTS[name]))
        if name in ("MOONCAKE_PREFERRED_SEGMENT", "MOONCAKE_REQUESTER_LOCAL_HOSTNAME"):
            return None
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


class KVConnectorTransferResults:
    """vLLM's plain result container (finished_sending, finished_recving, failed_recving sets)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


ASCEND_CONFIG = types.SimpleNamespace(enable_kv_nz=False, pd_tp_ratio=1, pd_head_ratio=1, num_head_replica=1)

REAL = {
    "vllm.logger": {"logger": logging.getLogger("vllm"), "init_logger": logging.getLogger},
    "vllm.envs": None,  # _Envs
    "vllm.v1.request": {"RequestStatus": RequestStatus},
    "vllm.utils.network_utils": {
        "get_ip": lambda: os.environ.get("VLLM_HOST_IP", "127.0.0.1"),
        "make_zmq_path": lambda scheme, host, port=None: "%s://%s" % (scheme, host) if port is None else "%s://%s:%d" % (scheme, host, port),
        "make_zmq_socket": _make_zmq_socket,
        "split_host_port": lambda a: (a.rsplit(":", 1)[0].strip("[]"), int(a.rsplit(":", 1)[1])),
    },
    "huggingface_hub.utils": {"httpx": None},
    "vllm.distributed.kv_transfer.kv_connector.v1.base": {"KVConnectorTransferResults": KVConnectorTransferResults},  # the real httpx, imported when first asked for
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


class _StandInType(type):
    """vLLM's connector reads class attributes of stand-in classes (`CacheHitSource.P2P`): MagicMocks."""

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = mock.MagicMock(name="%s.%s" % (cls.__name__, attr))
        setattr(cls, attr, value)
        return value


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
        if attr[:1].isupper():
            value = (_StandInType if _stubbed is STUBBED else type)(attr, (), {"__init__": _accept_anything})
        else:
            value = mock.MagicMock(name="%s.%s" % (self.__name__, attr))
        setattr(self, attr, value)
        return value


def _extracted(fullname, path):
    """True when `fullname` is a file extracted into the connector directory (then it is the real module)."""
    if _connector_dir is None:
        return False
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    origin = getattr(spec, "origin", None) or ""
    return os.path.abspath(origin).startswith(_connector_dir + os.sep)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in _stubbed or fullname in REAL and REAL[fullname] is None and fullname != "vllm.envs":
            return None
        if fullname != "vllm.envs" and _extracted(fullname, path):
            return None  # an extracted file: the real module
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        if spec.name == "vllm.envs":
            return _Envs(spec.name)
        m = _StandIn(spec.name)
        for k, v in (REAL.get(spec.name) or {}).items():
            if v is None and k == "httpx":
                import httpx as v  # noqa: PLC0415
            setattr(m, k, v)
        return m

    def exec_module(self, module):
        pass


def install(connector_dir):
    """Stubs torch/torch_npu/vllm/vllm_ascend (every module of them not extracted into `connector_dir`) and
    puts `connector_dir` first on sys.path. Returns the parallel-state holder the driver sets (tp rank and
    size of this process)."""
    global _connector_dir, _stubbed
    _connector_dir = os.path.abspath(connector_dir)
    # vllm-ascend's releases do not use httpx for anything driven here; vLLM's bootstrap client does.
    _stubbed = STUBBED if os.path.isdir(os.path.join(_connector_dir, "vllm")) else STUBBED_ASCEND
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    sys.path.insert(0, _connector_dir)
    return _Parallel


def load(connector_dir, module):
    """Imports e.g. 'kv_p2p.mooncake_connector' (vllm-ascend) or a full module name (vLLM) from the release in
    `connector_dir`."""
    install(connector_dir)
    import importlib

    return importlib.import_module(module if module.startswith("vllm.") else "vllm_ascend.distributed.kv_transfer." + module)


VLLM_CONNECTOR = "vllm.distributed.kv_transfer.kv_connector.v1.mooncake.mooncake_connector"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--check":
        sys.exit(__doc__)
    sys.dont_write_bytecode = True
    loaded = []
    if os.path.isdir(os.path.join(sys.argv[2], "vllm")):
        mod = load(sys.argv[2], VLLM_CONNECTOR)
        assert hasattr(mod, "MooncakeXferMetadata") and hasattr(mod, "MooncakeBootstrapServer"), VLLM_CONNECTOR
        loaded.append("mooncake_connector")
    for name in () if loaded else ("kv_p2p.mooncake_connector", "kv_p2p.mooncake_layerwise_connector"):
        mod = load(sys.argv[2], name)
        assert hasattr(mod, "MooncakeAgentMetadata"), name
        loaded.append(name.split(".")[-1])
    import mooncake.engine  # noqa: F401  (the real engine must import too)

    print("loaded " + ", ".join(loaded) + " with the real mooncake.engine")
