// examples/vllm-ascend/pair.mjs runs as its header says, in both wire profiles.
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { freePortRange } from '../helpers/ports';

const example = path.join(__dirname, '../../examples/vllm-ascend/pair.mjs');

describe('examples/vllm-ascend/pair.mjs', () => {
  for (const profile of ['0.23', '0.18']) {
    it(`profile ${profile}: params printed, pull ok, blocks identical, released on DONE`, async () => {
      const kvPort = await freePortRange(2);
      const out = await new Promise<string>((resolve, reject) => {
        execFile(process.execPath, [example, '--profile', profile, '--kv-port', String(kvPort)], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}${stderr}`)) : resolve(stdout)));
      });
      expect(out).toContain(`prefill side channel on 127.0.0.1:${kvPort}`);
      expect(out).toContain(profile === '0.23' ? '"remote_block_ids":[[3,4,5]]' : '"remote_block_ids":[3,4,5]');
      expect(out).toContain('pull: ok, 393216 bytes, blocks identical; prefill released the blocks: done');
    });
  }
});
