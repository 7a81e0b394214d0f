/** Port helpers for suites that need several consecutive ports (kv_port + rank addressing). */
export { freePortRange } from '../../lib/util/ports';
