// What the SDK keeps in the browser: one IndexedDB database `clarion`, one object store `kv`
// (installation id, the event queue, the last in-app answer and its ETag, in-app display
// counts, the service worker's `worker` keys, the last push subscription sent), shared with
// the service worker (same origin). Without IndexedDB (private modes of old browsers, some
// embedded views) the same keys live in memory for the page's life: the SDK still works, with
// a new id at each load.

export interface Store {
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown): Promise<void>;
}

export function memoryStore(): Store {
  const values = new Map<string, unknown>();
  return {
    get: <T>(key: string) => Promise.resolve(values.get(key) as T | undefined),
    set: (key: string, value: unknown) => {
      values.set(key, value);
      return Promise.resolve();
    },
  };
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Resolves once the transaction has committed: a put's own success comes before that, and a
 * page unloaded in between (a reload right after a "no") would lose the write. */
function committed(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error);
  });
}

/** IndexedDB if it opens, else memory (`fellBack` says which, for debug mode). */
export async function openStore(): Promise<{ store: Store; fellBack: boolean }> {
  let db: IDBDatabase;
  try {
    const open = indexedDB.open("clarion", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("kv");
    db = await request(open);
  } catch {
    return { store: memoryStore(), fellBack: true };
  }
  const memory = memoryStore();
  const tx = (mode: IDBTransactionMode) => db.transaction("kv", mode).objectStore("kv");
  return {
    fellBack: false,
    store: {
      async get<T>(key: string) {
        try {
          return (await request(tx("readonly").get(key))) as T | undefined;
        } catch {
          return memory.get<T>(key);
        }
      },
      async set(key: string, value: unknown) {
        try {
          const write = db.transaction("kv", "readwrite");
          write.objectStore("kv").put(value, key);
          await committed(write);
        } catch {
          await memory.set(key, value);
        }
      },
    },
  };
}
