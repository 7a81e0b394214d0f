export { MetricsRegistry, type MetricsRegistryOptions, type PromClientRegistry } from './registry';
export { renderText, PROMETHEUS_CONTENT_TYPE } from './text';
export type { MetricFamily, MetricsSource, MetricType, Labels, ValueSample, HistogramSample } from './types';
