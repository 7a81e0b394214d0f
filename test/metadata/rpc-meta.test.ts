// The rpc_meta codec the engine publishes and reads peers' entries with (lib/metadata/rpc-meta.ts).
import { describe, expect, it } from 'vitest';
import { decodeRpcMeta, encodeRpcMeta } from '../../lib/metadata/rpc-meta';

describe('rpc_meta', () => {
  it('writes what upstream writes and reads it back', () => {
    const text = encodeRpcMeta({ ipOrHostName: '127.0.0.1', rpcPort: 16095 });
    expect(text).toBe('{"ip_or_host_name":"127.0.0.1","rpc_port":16095}');
    expect(decodeRpcMeta(text)).toEqual({ ipOrHostName: '127.0.0.1', rpcPort: 16095 });
    // Upstream's jsoncpp output, with its newline, and numbers jsoncpp reads as unsigned integers.
    expect(decodeRpcMeta('{"ip_or_host_name":"::1","rpc_port":15001.0}\n')).toEqual({ ipOrHostName: '::1', rpcPort: 15001 });
    expect(decodeRpcMeta('{"rpc_port":65535,"ip_or_host_name":"prefill-0.svc","extra":[1e400]}')).toEqual({ ipOrHostName: 'prefill-0.svc', rpcPort: 65535 });
  });

  it('refuses anything a peer could not be reached with, as MALFORMED_JSON naming where it came from', () => {
    for (const bad of [
      '',
      'not json',
      '[]',
      'null',
      '{"ip_or_host_name":"x"}',
      '{"rpc_port":1}',
      '{"ip_or_host_name":"x","rpc_port":-1}',
      '{"ip_or_host_name":"x","rpc_port":0}',
      '{"ip_or_host_name":"x","rpc_port":65536}',
      '{"ip_or_host_name":"x","rpc_port":"15001"}',
      '{"ip_or_host_name":"x","rpc_port":1.5}',
      '{"ip_or_host_name":"x","rpc_port":18446744073709551617}',
      '{"ip_or_host_name":"","rpc_port":1}',
      '{"ip_or_host_name":"a b","rpc_port":1}',
      '{"ip_or_host_name":"a/b","rpc_port":1}',
      `{"ip_or_host_name":"${'a'.repeat(256)}","rpc_port":1}`,
      '{"ip_or_host_name":5,"rpc_port":1}',
      '{"__proto__":{"ip_or_host_name":"x","rpc_port":1}}',
    ]) {
      expect(() => decodeRpcMeta(bad, "'peer' (key k)"), bad).toThrow(expect.objectContaining({ code: 'MALFORMED_JSON', message: expect.stringContaining("rpc_meta of 'peer' (key k)") }));
    }
    expect(() => encodeRpcMeta({ ipOrHostName: '', rpcPort: 1 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => encodeRpcMeta({ ipOrHostName: 'x', rpcPort: 70000 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });
});
