// A simulated network link between two stages: what a message costs to cross it is the link's
// latency plus its size over the bandwidth, and a link carries one message at a time (a message
// waits for the one before it to be through). Used by the ring's workers to inject the links of
// heterogeneous devices (bench:pipeline); a link of 0 latency and no bandwidth bound is a direct post.

export interface LinkSpec {
  /** One-way latency, ms. */
  latencyMs: number;
  /** Bytes per second; 0 or Infinity: unbounded. */
  bytesPerSecond: number;
}

export const DIRECT_LINK: LinkSpec = { latencyMs: 0, bytesPerSecond: 0 };

/** The ms a message of `bytes` takes on the link, once the link is free. */
export function transferMs(link: LinkSpec, bytes: number): number {
  const wire = link.bytesPerSecond > 0 && Number.isFinite(link.bytesPerSecond) ? (1000 * bytes) / link.bytesPerSecond : 0;
  return link.latencyMs + wire;
}

/**
 * Sends over a simulated link: `deliver` is called for each message in order, each after its
 * transfer time counted from when the link was free (the wire part serialises; latency overlaps,
 * as on a real link where several messages can be in flight).
 */
export function simulatedLink(link: LinkSpec, deliver: (message: Uint8Array) => void): (message: Uint8Array) => void {
  if (link.latencyMs <= 0 && !(link.bytesPerSecond > 0 && Number.isFinite(link.bytesPerSecond))) return deliver;
  let wireFreeAt = 0;
  // Due messages in send order (their due times never decrease): one timer for the head.
  const queue: { at: number; message: Uint8Array }[] = [];
  let timer: NodeJS.Timeout | null = null;
  const pump = (): void => {
    timer = null;
    while (queue.length > 0 && queue[0].at <= performance.now()) deliver(queue.shift()!.message);
    if (queue.length > 0) timer = setTimeout(pump, Math.max(0, queue[0].at - performance.now()));
  };
  return (message) => {
    const now = performance.now();
    wireFreeAt = Math.max(wireFreeAt, now) + transferMs({ latencyMs: 0, bytesPerSecond: link.bytesPerSecond }, message.byteLength);
    queue.push({ at: Math.max(wireFreeAt + link.latencyMs, queue.at(-1)?.at ?? 0), message });
    if (timer === null) timer = setTimeout(pump, Math.max(0, queue[0].at - now));
  };
}
