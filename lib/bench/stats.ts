import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { summarizeSorted } from '../util/stats';

/** Latency samples (ms) with percentiles. */
export class Samples {
  private data = new Float64Array(1024);
  private n = 0;

  push(v: number): void {
    if (this.n === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.n++] = v;
  }

  get count(): number {
    return this.n;
  }

  summary(): { avg: number; p50: number; p99: number; max: number } {
    const { mean, p50, p99, max } = summarizeSorted(this.data.slice(0, this.n).sort());
    return { avg: mean, p50, p99, max };
  }
}

/** CPU time of this process over an interval, as % of one core. */
export class CpuMeter {
  private readonly start = process.cpuUsage();
  private readonly t0 = performance.now();
  percent(): number {
    const d = process.cpuUsage(this.start);
    const wall = (performance.now() - this.t0) * 1000;
    return wall > 0 ? ((d.user + d.system) / wall) * 100 : 0;
  }
}

const RESOLUTION_MS = 10;

/**
 * Event-loop delay and RSS while a run lasts. The histogram records whole timer intervals, so the
 * delay reported is the interval minus the sampling resolution: how late the loop ran a due timer.
 */
export class HealthMeter {
  private readonly h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  private readonly rss: number[] = [];
  private timer: NodeJS.Timeout;

  constructor(sampleMs = 1000) {
    this.h.enable();
    this.rss.push(process.memoryUsage.rss());
    this.timer = setInterval(() => this.rss.push(process.memoryUsage.rss()), sampleMs);
    this.timer.unref();
  }

  stop(): { loopDelayP99Ms: number; loopDelayMaxMs: number; rssStartMiB: number; rssEndMiB: number; rssMaxMiB: number; rssSamples: number[] } {
    clearInterval(this.timer);
    this.h.disable();
    this.rss.push(process.memoryUsage.rss());
    const mib = (b: number) => Math.round((b / 1048576) * 10) / 10;
    return {
      loopDelayP99Ms: Math.max(0, this.h.percentile(99) / 1e6 - RESOLUTION_MS),
      loopDelayMaxMs: Math.max(0, this.h.max / 1e6 - RESOLUTION_MS),
      rssStartMiB: mib(this.rss[0]),
      rssEndMiB: mib(this.rss[this.rss.length - 1]),
      rssMaxMiB: mib(Math.max(...this.rss)),
      rssSamples: this.rss.map(mib),
    };
  }
}
