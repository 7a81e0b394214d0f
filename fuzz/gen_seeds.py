#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (run from anywhere; idempotent).

tcp_server seeds name the fixed region addresses of fuzz/tcp_server_fuzz.cpp. Byte 0 of each is the
harness's control byte (bits 0-2 chunk size, bit 3 device copies fail). Text seeds are real values:
the descriptor and rpc_meta upstream 0.3.13.post1 wrote, what mooncake-node publishes, the handshake
frames (lib/handshake/framing.ts) and the Ascend PD guide's configs.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, 'corpus')

ARENA = 0x200000000000
A, B, C, PRIV, BIG = ARENA + 0x1000, ARENA + 0x3000, ARENA + 0x3800, ARENA + 0x5000, ARENA + 0x10000
DEV = 0x210000000000 + 0x1000
READ, WRITE, V2 = 0, 1, 0x80


def hdr(size, addr, op):
    return struct.pack('<QQB7x', size, addr, op)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def tcp_seeds():
    body = bytes(range(256)) * 4
    s = {
        'write_v2_A': bytes([7]) + hdr(64, A + 16, WRITE | V2) + body[:64],
        'read_v2_A': bytes([7]) + hdr(128, A, READ | V2),
        'read_v1_A': bytes([2]) + hdr(32, A + 100, READ),
        'write_v1_A_then_read': bytes([4]) + hdr(16, A, WRITE) + body[:16] + hdr(16, A, READ | V2),
        'pipelined_mix': bytes([6]) + hdr(8, A, WRITE | V2) + body[:8] + hdr(8, A, READ | V2) + hdr(2048, B, READ | V2)
        + hdr(4, C + 4, WRITE | V2) + body[:4] + hdr(0x1000, A, READ),
        'span_B_C_rejected': bytes([7]) + hdr(0x10, C - 8, READ | V2) + hdr(8, A, READ | V2),
        'private_rejected': bytes([7]) + hdr(8, PRIV, WRITE | V2) + body[:8],
        'outside_v1': bytes([7]) + hdr(8, A, READ) + hdr(8, ARENA + 0x2000, READ),
        'zero_size': bytes([7]) + hdr(0, A, WRITE | V2),
        'wrapping': bytes([7]) + hdr(0xFFFFFFFFFFFFFFF0, A, READ | V2),
        'odd_opcode_is_read': bytes([7]) + hdr(8, A, 0x85),
        'device_write_read': bytes([7]) + hdr(32, DEV + 64, WRITE | V2) + body[:32] + hdr(32, DEV + 64, READ | V2),
        'device_copy_fails': bytes([8 | 7]) + hdr(32, DEV, WRITE | V2) + body[:32] + hdr(8, A, READ | V2),
        'big_direct_recv': bytes([6]) + hdr(40000, BIG + 8, WRITE | V2) + (body * 40)[:40000] + hdr(16, BIG + 8, READ | V2),
        # More than 16 MiB of READ data queued: the server stops reading until it drains.
        'big_reads_pause': bytes([7]) + hdr(0x40000, BIG, READ | V2) * 66 + hdr(8, A, WRITE | V2) + body[:8],
        # bit 4: the client half-closes right after sending, before reading any answer.
        'eager_eof_reads': bytes([16 | 7]) + hdr(64, A, READ | V2) + hdr(0x40000, BIG, READ) + hdr(8, B, WRITE | V2) + body[:8],
        'eager_eof_mid_body': bytes([16 | 6]) + hdr(16, A, READ | V2) + hdr(64, A + 64, WRITE | V2) + body[:10],
        'split_header_bytewise': bytes([0]) + hdr(8, A + 8, WRITE | V2) + body[:8],
        # A real upstream request as captured on the wire (addr from the live descriptor): rejected here.
        'upstream_live_read': bytes([7]) + hdr(65536, 140362473537536, READ | V2),
    }
    for k, v in s.items():
        write('tcp_server', k, v)


LIVE_DESC = ('{"buffers":[{"addr":140362473537536,"length":100663296,"name":"127.0.0.1:17011"}],'
             '"name":"127.0.0.1:17011","protocol":"tcp","tcp_data_port":16173,"tcp_proto_version":2,'
             '"timestamp":"2026-11-25 08:25:57.730727"}')
LIVE_RPC = '{"ip_or_host_name":"127.0.0.1","rpc_port":16095}'
NODE_DESC = ('{"buffers":[{"addr":94372992,"length":1048576,"mcnode_shm_offset":0,"mcnode_shm_path":"/mcnode-1-2",'
             '"name":"10.0.0.2:15001"},{"addr":140000000000000,"length":4096,"name":"10.0.0.2:15001"}],'
             '"mcnode_shm":{"host_id":"b0a7c6e2-1f2e-4c3d-9a7b-000000000000:4026531837","pid":4242},'
             '"name":"10.0.0.2:15001","protocol":"tcp","tcp_data_host":"10.0.0.2","tcp_data_port":15002,'
             '"tcp_proto_version":2,"timestamp":"2026-11-25 08:25:57.730727"}')
OLD_DESC = '{"buffers":[],"name":"node-a","protocol":["rdma","tcp"],"tcp_data_port":16000,"timestamp":""}'


def text_seeds():
    for name, text in {'live_descriptor': LIVE_DESC, 'node_descriptor': NODE_DESC, 'multi_protocol': OLD_DESC,
                       'live_rpc_meta': LIVE_RPC}.items():
        write('json', name, text)
    write('json', 'escapes', '{"s":"a\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\/","n":[-0,1.5,-9223372036854775808,18446744073709551615,1e400,0.1],"t":true,"f":false,"z":null}')
    write('json', 'nested', '[' * 64 + ']' * 64)
    # handshake_json: the texts FastWriter puts in handshake frames (trailing newline included).
    for name, text in {'descriptor': LIVE_DESC, 'rpc_meta': LIVE_RPC, 'probe': '{}', 'probe_reply': '{"status":"success"}',
                       'notify': '{"name":"127.0.0.1:17011","notify_msg":"caf\\u00e9 \\ud83d\\ude00 /\x7f"}',
                       'numbers': '[-0.0,1.0,1e+9999,0.10000000000000001,9007199254740993,-9223372036854775808]',
                       'proto_key': '{"__proto__":{"x":1},"constructor":null,"a":[{},[]]}'}.items():
        write('handshake_json', name, text + '\n')
    # descriptor target: the descriptor's text.
    write('descriptor', 'live_descriptor', LIVE_DESC)
    write('descriptor', 'node_descriptor', NODE_DESC)
    write('descriptor', 'multi_protocol', OLD_DESC)
    # rpc_meta (JS target, lib/metadata/rpc-meta.ts): upstream's, ours (IPv6, a host name), odd numbers.
    write('rpc_meta', 'live_rpc_meta', LIVE_RPC)
    write('rpc_meta', 'ipv6', '{"ip_or_host_name":"::1","rpc_port":15001}')
    write('rpc_meta', 'host_name', '{"ip_or_host_name":"prefill-0.svc.cluster.local","rpc_port":65535}')
    write('rpc_meta', 'odd_numbers', '{"ip_or_host_name":"10.0.0.1","rpc_port":15001.0,"extra":[1e400,-0]}')


def frame(type_, text):
    body = (bytes([type_]) if type_ is not None else b'') + text.encode()
    return struct.pack('<Q', len(body)) + body


def handshake_seeds():
    hs = {
        'probe': frame(3, '{}\n'),  # 04 00 00 00 00 00 00 00 03 7B 7D 0A
        'probe_reply': frame(3, '{"status":"success"}\n'),
        'metadata': frame(1, LIVE_DESC + '\n'),
        'notify': frame(2, '{"name":"127.0.0.1:17011","notify_msg":"hello"}\n'),
        'notify_reply': frame(2, '{"name":"","notify_msg":"success"}\n'),
        'connection': frame(0, '{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}\n'),
        'old_protocol': frame(None, '{"local_nic_path":"a@b","peer_nic_path":"c@d","qp_num":[1,2]}\n'),
        'two_frames': frame(3, '{}\n') + frame(1, 'null\n'),
        'zero_length': b'\x00' * 8,
        'too_long': struct.pack('<Q', (1 << 20) + 1) + b'\x03',
    }
    for k, v in hs.items():
        write('handshake', k, v)


def kv_seeds():
    # From ../shared/seed (vllm-ascend's mooncake connector guide), producer and consumer.
    producer = {"kv_connector": "MooncakeConnectorV1", "kv_buffer_device": "npu", "kv_role": "kv_producer",
                "kv_parallel_size": 1, "kv_port": "20001", "engine_id": "0", "kv_rank": 0,
                "kv_connector_module_path": "vllm_ascend.distributed.mooncake_connector",
                "kv_connector_extra_config": {"prefill": {"dp_size": 2, "tp_size": 2}, "decode": {"dp_size": 2, "tp_size": 2}}}
    consumer = dict(producer, kv_role="kv_consumer", kv_port="20002", engine_id="1", kv_rank=1)
    layerwise = dict(producer, kv_connector="MooncakeLayerwiseConnector", kv_port=30000,
                     kv_connector_extra_config={"prefill": {"dp_size": 1, "tp_size": 4}, "decode": {"dp_size": 1, "tp_size": 2}})
    write('kv_config', 'transfer_producer', 't' + json.dumps(producer, indent=2))
    write('kv_config', 'transfer_consumer', 't' + json.dumps(consumer))
    write('kv_config', 'transfer_layerwise', 't' + json.dumps(layerwise))
    mooncake = {"prefill_url": "localhost:15272", "decode_url": "localhost:14012", "metadata_backend": "http", "protocol": "ascend"}
    write('kv_config', 'mooncake_seed', 'm' + json.dumps(mooncake, indent=2))
    write('kv_config', 'mooncake_http', 'm' + json.dumps({"prefill_url": "[::1]:15272", "decode_url": "127.0.0.1:14012",
                                                          "metadata_backend": "http", "metadata_server": "127.0.0.1:8080", "protocol": "tcp"}))
    write('kv_config', 'mooncake_etcd', 'm' + json.dumps({"metadata_backend": "etcd", "metadata_server": "etcd://127.0.0.1:2379",
                                                          "protocol": "tcp", "device_name": "", "local_hostname": "node-1"}))
    write('kv_config', 'mooncake_p2p', 'm' + json.dumps({"metadata_backend": "p2phandshake", "protocol": "tcp"}))


def client_seeds():
    """tcp_client: control byte, 4 bytes per operation, then the target's answer stream."""
    OK = struct.pack('<Q', 0x4D43545600000000)
    REJ = struct.pack('<Q', 0x4D43545600000001)

    def ctl(n_ops, v2, ending, chunk):  # ending 0 FIN, 1 reset, 2 silence
        return bytes([(n_ops - 1) | (4 if v2 else 0) | (ending << 3) | (chunk << 5)])

    def op(write, length, where=0):
        return bytes([1 if write else 0]) + struct.pack('<H', length - 1) + bytes([where])

    def data(n, seed=1):
        return bytes(((i * 31 + seed) & 0xff) for i in range(n))

    write('tcp_client', 'v2_read_exact', ctl(1, True, 0, 6) + op(False, 4096) + OK + data(4096))
    write('tcp_client', 'v2_read_rejected', ctl(1, True, 0, 2) + op(False, 4096) + REJ + data(4096))
    write('tcp_client', 'v2_read_short_reset', ctl(1, True, 1, 5) + op(False, 4096, 9) + OK + data(1000))
    write('tcp_client', 'v2_read_long', ctl(1, True, 0, 7) + op(False, 100, 3) + OK + data(100) + data(300, 7))
    write('tcp_client', 'v2_write_ack', ctl(1, True, 0, 0) + op(True, 65536) + OK)
    write('tcp_client', 'v2_garbage_status', ctl(1, True, 0, 3) + op(False, 64) + b'HTTP/1.1' + data(64))
    write('tcp_client', 'v2_silence', ctl(2, True, 2, 4) + op(False, 64) + op(True, 64, 5) + OK + data(64))
    write('tcp_client', 'v2_mixed_four', ctl(4, True, 0, 6) + op(False, 300) + op(True, 200, 40) + op(False, 5000, 80) + op(True, 1, 200)
          + OK + data(300) + OK + OK + data(5000, 3) + OK)
    write('tcp_client', 'v1_read_write', ctl(3, False, 0, 6) + op(True, 1000) + op(False, 2000, 50) + op(False, 10, 90) + data(2000) + data(10, 5))
    write('tcp_client', 'v1_read_short_fin', ctl(1, False, 0, 1) + op(False, 512, 7) + data(100))


if __name__ == '__main__':
    tcp_seeds()
    client_seeds()
    text_seeds()
    handshake_seeds()
    kv_seeds()
