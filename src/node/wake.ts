// When a node must send a message so that the coordinator moves on. The coordinator's clock and
// its randomness are those of the messages it handles (docs/network.md): a task whose result was
// committed is drawn for audit only by a *later* message's Hash-Chain, and a result in its
// challenge window becomes final only with a message whose Timestamp is past the window. Under
// load other messages do both; on a quiet network nothing would happen until the next heartbeat
// (seconds), so the node that waits to be paid sends one itself — only when no other message came.
//
// Pure rules over what the node saw in the coordinator's results, in slot order; the node passes in
// the time and does the sending (node.ts).

/** A result of the coordinator, as the rules need it: the replies to this node in it, and the tasks it ended. */
export interface SeenResult {
  /** Actions of the messages to this node, with their Task tag. */
  toMe: { action: string; task: string }[];
  /** Tasks whose last Infer-Response (final or failed) this result holds. */
  ended: string[];
}

export interface WakeState {
  /** When this node's latest commit was seen with no result after it yet (its audit draw waits for one); null when none waits. */
  drawSince: number | null;
  /** This node's revealed tasks waiting out their challenge window: task → local time past which a message ends it, and beats sent for it. */
  windows: Map<string, { at: number; beats: number }>;
}

export const WAKE = {
  /** How long a commit waits for someone else's message before the node sends one (a few results' time under load). */
  drawSlackMs: 25,
  /** How long past a window's end the node waits for someone else's message. */
  windowSlackMs: 50,
  /** A window still open after a beat (another party revealed later, or clocks differ): beats again after this, doubling. */
  retryMs: 250,
  /** Beats per window at most; then the periodic heartbeat is left to end it. */
  maxBeats: 4,
  /** Windows followed at once at most (the oldest is dropped: the heartbeat still ends it, later). */
  maxWindows: 4096,
} as const;

export const emptyWake = (): WakeState => ({ drawSince: null, windows: new Map() });

/**
 * The state after a page of results seen at `now` (local ms). `windowMs` is the coordinator's
 * Challenge-Window-Ms, or null when unknown (no window is then followed). The window is counted
 * from when the Reveal's result is seen: the SU stamped the Reveal before it was evaluated, so a
 * message sent past `now + windowMs` carries a Timestamp past the window (on one clock).
 */
export function observe(state: WakeState, results: SeenResult[], now: number, windowMs: number | null): WakeState {
  let drawSince = state.drawSince;
  const windows = new Map(state.windows);
  for (const r of results) {
    // Any result after the commit's is a later message: the draw has happened.
    drawSince = null;
    for (const m of r.toMe) {
      if (m.action === 'Submit-Result-Response') drawSince = now;
      else if (m.action === 'Reveal-Response' && windowMs !== null) {
        windows.delete(m.task);
        windows.set(m.task, { at: now + windowMs + 1, beats: 0 });
      }
    }
    for (const task of r.ended) windows.delete(task);
  }
  while (windows.size > WAKE.maxWindows) windows.delete(windows.keys().next().value!);
  return { drawSince, windows };
}

/** When the node should send a message if nothing else comes first (local ms), or null: nothing waits on one. */
export function beatAt(state: WakeState): number | null {
  let at = state.drawSince === null ? null : state.drawSince + WAKE.drawSlackMs;
  for (const w of state.windows.values()) {
    const due = w.at + (w.beats === 0 ? WAKE.windowSlackMs : 0);
    if (at === null || due < at) at = due;
  }
  return at;
}

/**
 * The state after the node sent a message at `now`: the draw no longer waits, and each window
 * that was due is looked at again a little later (it ends when its final Infer-Response is seen),
 * until WAKE.maxBeats.
 */
export function afterBeat(state: WakeState, now: number): WakeState {
  const windows = new Map<string, { at: number; beats: number }>();
  for (const [task, w] of state.windows) {
    const due = w.at + (w.beats === 0 ? WAKE.windowSlackMs : 0);
    if (due > now) windows.set(task, w);
    else if (w.beats + 1 < WAKE.maxBeats) windows.set(task, { at: now + WAKE.retryMs * 2 ** w.beats, beats: w.beats + 1 });
  }
  return { drawSince: null, windows };
}
