// The event queue: trackEvent appends, a flush sends up to BATCH_MAX events per call, a failed
// call is retried with exponential backoff, and every change is saved (IndexedDB) so a reload
// loses nothing. Pure of the browser: the sender, the saver and the timer are given, so the
// unit tests drive it with a fake clock.

export interface QueuedEvent {
  name: string;
  label?: string;
  attributes?: Record<string, unknown>;
  tags?: string[];
  occurred_at: string;
}

/** Batch's Web SDK sends at most 30 events a call; the server takes 100. */
export const BATCH_MAX = 30;
/** Batch's debounce: events tracked within 200 ms go in one call. */
export const DEBOUNCE_MS = 200;
/** The queue keeps the newest 1,000 events (an offline page tracking in a loop must not fill
 * the disk); older ones are dropped first. */
export const QUEUE_MAX = 1000;
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30_000;

/** Delay before retry number `failures` (1 for the first retry): 1 s, 2 s, 4 s, ... 30 s. */
export function backoffMs(failures: number): number {
  return Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.max(0, failures - 1));
}

/** Whether a batch that got `status` (0: no answer) is worth sending again. A 4xx other than
 * 408/429 says the batch itself is refused: sending it again would be refused again. */
export function retryable(status: number): boolean {
  return status === 0 || status === 408 || status === 429 || status >= 500;
}

export interface QueueDeps {
  /** Sends a batch; resolves to the HTTP status, 0 when no answer came. */
  send(events: QueuedEvent[]): Promise<number>;
  save(events: QueuedEvent[]): void;
  schedule(fn: () => void, ms: number): void;
  /** A batch given up (refused by the server), for debug mode. */
  dropped?(events: QueuedEvent[], status: number): void;
  retrying?(status: number, ms: number): void;
}

export class EventQueue {
  events: QueuedEvent[] = [];
  failures = 0;
  private sending = false;
  private scheduled = false;
  private ready = false;

  constructor(private readonly deps: QueueDeps) {}

  /** Events saved by an earlier page; kept before the ones tracked since. */
  restore(saved: QueuedEvent[] | undefined): void {
    if (saved && saved.length > 0) this.events = [...saved, ...this.events].slice(-QUEUE_MAX);
  }

  /** The installation is registered: sending may start. */
  start(): void {
    this.ready = true;
    if (this.events.length > 0) this.later(0);
  }

  push(event: QueuedEvent): void {
    this.events.push(event);
    if (this.events.length > QUEUE_MAX) this.events.splice(0, this.events.length - QUEUE_MAX);
    this.deps.save(this.events);
    if (this.failures === 0) this.later(DEBOUNCE_MS);
  }

  private later(ms: number): void {
    if (this.scheduled || !this.ready) return;
    this.scheduled = true;
    this.deps.schedule(() => {
      this.scheduled = false;
      void this.flush();
    }, ms);
  }

  /** Sends batches until the queue is empty or a call fails. */
  async flush(): Promise<void> {
    if (this.sending || !this.ready) return;
    this.sending = true;
    try {
      while (this.events.length > 0) {
        const batch = this.events.slice(0, BATCH_MAX);
        const status = await this.deps.send(batch);
        if (status >= 200 && status < 300) {
          this.failures = 0;
        } else if (retryable(status)) {
          this.failures += 1;
          const ms = backoffMs(this.failures);
          this.deps.retrying?.(status, ms);
          this.sending = false;
          this.later(ms);
          return;
        } else {
          this.deps.dropped?.(batch, status);
        }
        // Events tracked while the call was out were appended: drop only what was sent.
        this.events.splice(0, batch.length);
        this.deps.save(this.events);
      }
    } finally {
      this.sending = false;
    }
  }

  /** Everything still queued, taken out (the page is going away: pagehide sends it with
   * keepalive). Split in calls of BATCH_MAX. */
  drain(): QueuedEvent[][] {
    const batches: QueuedEvent[][] = [];
    for (let i = 0; i < this.events.length; i += BATCH_MAX) batches.push(this.events.slice(i, i + BATCH_MAX));
    this.events = [];
    this.deps.save(this.events);
    return batches;
  }
}
