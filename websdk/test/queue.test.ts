// The event queue (src/sdk/queue.ts): batching, backoff, what is retried, persistence.
import assert from "node:assert/strict";
import { test } from "node:test";
import { BATCH_MAX, DEBOUNCE_MS, EventQueue, QUEUE_MAX, backoffMs, retryable, type QueuedEvent } from "../src/sdk/queue";

/** A queue over a fake clock and a scripted server. */
function harness(statuses: number[]) {
  const sent: QueuedEvent[][] = [];
  const saved: number[] = [];
  const timers: { fn: () => void; ms: number }[] = [];
  const queue = new EventQueue({
    send: (events) => {
      sent.push(events);
      return Promise.resolve(statuses.shift() ?? 202);
    },
    save: (events) => saved.push(events.length),
    schedule: (fn, ms) => timers.push({ fn, ms }),
  });
  /** Runs the next timer and waits for the flush it starts. */
  const tick = async () => {
    const timer = timers.shift();
    assert.ok(timer, "a timer is due");
    timer.fn();
    for (let i = 0; i < 20; i++) await Promise.resolve();
    return timer.ms;
  };
  return { queue, sent, saved, timers, tick };
}

const event = (n: number): QueuedEvent => ({ name: `e${n}`, occurred_at: "2026-06-15T12:00:00Z" });

test("backoff doubles from 1 s up to 30 s", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 20].map(backoffMs), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
});

test("no answer, 408, 429 and 5xx are retried; other refusals are not", () => {
  assert.deepEqual([0, 408, 429, 500, 503].map(retryable), [true, true, true, true, true]);
  assert.deepEqual([400, 401, 403, 404, 413].map(retryable), [false, false, false, false, false]);
});

test("nothing is sent before the installation is registered; events tracked together go in one call", async () => {
  const h = harness([]);
  h.queue.push(event(1));
  h.queue.push(event(2));
  assert.equal(h.timers.length, 0);
  h.queue.start();
  assert.equal(await h.tick(), 0);
  assert.deepEqual(h.sent.map((b) => b.length), [2]);
  assert.equal(h.queue.events.length, 0);
  h.queue.push(event(3));
  h.queue.push(event(4));
  assert.equal(h.timers.length, 1, "one debounce timer for both");
  assert.equal(await h.tick(), DEBOUNCE_MS);
  assert.deepEqual(h.sent.map((b) => b.length), [2, 2]);
});

test("a long queue leaves in batches of BATCH_MAX", async () => {
  const h = harness([]);
  for (let i = 0; i < BATCH_MAX * 2 + 5; i++) h.queue.push(event(i));
  h.queue.start();
  await h.tick();
  assert.deepEqual(h.sent.map((b) => b.length), [BATCH_MAX, BATCH_MAX, 5]);
  assert.equal(h.sent[2]?.[4]?.name, `e${BATCH_MAX * 2 + 4}`);
  assert.equal(h.saved.at(-1), 0);
});

test("failures back off and keep the events; success sends them all, in order", async () => {
  const h = harness([0, 503, 202]);
  h.queue.start();
  h.queue.push(event(1));
  assert.equal(await h.tick(), DEBOUNCE_MS);
  h.queue.push(event(2));
  assert.equal(h.timers.length, 1, "a retry is pending; no new debounce");
  assert.equal(await h.tick(), 1000);
  assert.equal(await h.tick(), 2000);
  assert.deepEqual(h.sent.map((b) => b.map((e) => e.name)), [["e1"], ["e1", "e2"], ["e1", "e2"]]);
  assert.equal(h.queue.events.length, 0);
  assert.equal(h.queue.failures, 0);
});

test("a batch the server refuses is dropped, the rest goes on", async () => {
  const h = harness([400]);
  h.queue.start();
  h.queue.push(event(1));
  await h.tick();
  assert.equal(h.queue.events.length, 0);
  assert.equal(h.timers.length, 0);
});

test("saved events come first after a reload; the queue keeps the newest QUEUE_MAX", () => {
  const h = harness([]);
  h.queue.push(event(9));
  h.queue.restore([event(1), event(2)]);
  assert.deepEqual(h.queue.events.map((e) => e.name), ["e1", "e2", "e9"]);
  for (let i = 0; i < QUEUE_MAX; i++) h.queue.push(event(100 + i));
  assert.equal(h.queue.events.length, QUEUE_MAX);
  assert.equal(h.queue.events[0]?.name, "e100");
});

test("drain hands everything out in batches and empties the saved queue", () => {
  const h = harness([]);
  for (let i = 0; i < BATCH_MAX + 1; i++) h.queue.push(event(i));
  assert.deepEqual(h.queue.drain().map((b) => b.length), [BATCH_MAX, 1]);
  assert.equal(h.queue.events.length, 0);
  assert.equal(h.saved.at(-1), 0);
});
