/* Baton C API.
 *
 * An application keeps its state in a named checkpoint segment: register or
 * open it, write into the memory baton_segment_data() returns, and commit.
 * Every committed generation is replicated to other nodes; after a failure,
 * opening the same name on another node restores the newest copy.
 *
 * Every function checks its arguments and returns 0 or a negative
 * BATON_E* code; baton_strerror() names it, baton_last_error() explains the
 * most recent failure on the calling thread. No function aborts on bad input.
 *
 * Thread safety: calls on one baton_t may come from any thread, at once; a
 * segment's memory is the application's to synchronise. With batond, a
 * baton_t's requests are answered one at a time (a long baton_wait holds
 * back other threads' requests on it, not their commits). baton_stop ends
 * the calls other threads are in; baton_unregister waits for the calls on
 * its segment. After fork() the child's calls on its parent's handles are
 * refused (BATON_EINVAL): a child connects or starts its own.
 */
#ifndef BATON_BATON_H
#define BATON_BATON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum baton_error {
  BATON_OK = 0,
  BATON_EINVAL = -1,     /* null, empty, too long, out of range, unknown handle */
  BATON_ENOENT = -2,     /* no such segment (anywhere, for load/open) */
  BATON_EEXIST = -3,     /* the name is held by another application or node */
  BATON_ENOMEM = -4,
  BATON_ETIMEDOUT = -5,
  BATON_EUNAVAIL = -6,   /* no live peer / engine stopped */
  BATON_EIO = -7,
  BATON_ECORRUPT = -8,
  BATON_EFENCED = -9,    /* ownership moved to a newer owner epoch */
  BATON_EBUSY = -10,
  BATON_EINTERNAL = -11,
  BATON_EPERM = -12,     /* this user may not: not let in by batond's client.user / client.group, or a request
                            only an administrator (root, batond's user) may make */
};

#define BATON_NAME_MAX 63

typedef struct baton_engine baton_t;
typedef struct baton_segment baton_segment_t;

typedef struct baton_config {
  uint16_t node_id;            /* 1..65534, unique in the cluster */
  uint32_t replication_factor; /* default 1 */
  uint32_t retain;             /* older generations replicas keep; default 0 */
  uint64_t max_segment_size;   /* default 1 GiB */
  uint32_t spin;               /* 1: worker never sleeps (dedicated core) */
  uint32_t no_write_tracking;  /* 1: commits copy whole segments (something other than this
                                  process's writes through baton_segment_data() changes them: DMA) */
  uint32_t copy_on_write;      /* BATON_COW (1): copy-on-write commits (S14): a commit
                                  write-protects what was written and returns; the engine copies the
                                  snapshot while the application writes on (a SIGBUS handler copies a
                                  page aside on its first write). read(2) into a protected page fails
                                  with EFAULT. BATON_COW_PROTECT_AHEAD (2): the same, and a thread of
                                  the process protects written pages again between commits, so a
                                  commit's pause stays short however much was written (the writes
                                  pay for it). BATON_COW_QUIESCENT (3): the same, and the application
                                  promises that nothing but the committing thread writes a segment
                                  during its baton_commit: the commit copies the few pages not
                                  protected again yet instead of protecting them, so its pause is a
                                  few page copies (a write by another thread during the call can leave
                                  a snapshot that is no point in the run). 0: the stage copy (default);
                                  other values: BATON_EINVAL. (Daemon mode: batond's [snapshots]
                                  section decides the mode; BATON_QUIESCENT_COMMITS=1 in the
                                  application's environment makes the promise.) */
} baton_config_t;

#define BATON_COW 1
#define BATON_COW_PROTECT_AHEAD 2
#define BATON_COW_QUIESCENT 3

/* Fills *config with defaults. */
void baton_config_init(baton_config_t* config);

/* Starts an embedded engine. Each link is "PEER=ethdev:DEVARGS", e.g.
 * "2=ethdev:net_memif0,role=server,socket=/run/baton/1-2.sock".
 * BATON_EINVAL for a malformed config or link string. */
int baton_start(const baton_config_t* config, const char* const* links, size_t n_links, baton_t** out);

/* Connects to the node's batond (daemon mode: the application is a separate
 * process; its segments survive its crash, S3). BATON_EUNAVAIL if no daemon
 * listens at socket_path. The same calls below then work through the daemon.
 * Applications that link libbaton-client (no DPDK) have only this mode. */
int baton_connect(const char* socket_path, baton_t** out);

/* Stops the engine (or disconnects from batond); its segments' handles become
 * invalid. NULL is ignored. */
void baton_stop(baton_t* baton);

/* baton_register, baton_open and baton_load write *out on success only. */

/* Registers a new segment (S1). BATON_EEXIST if any reachable node holds the name. */
int baton_register(baton_t* baton, const char* name, uint64_t size, baton_segment_t** out);

/* Application start-up (S11): restores the newest copy if any node holds one
 * (*restored = 1), else creates a zeroed segment (*restored = 0). `restored`
 * and `generation` may be NULL. A restored segment holds exactly generation
 * *generation as committed: after an application crash on the same node,
 * bytes the dead application wrote after its last commit are gone. A
 * segment committed in another size than `size` is not restored:
 * BATON_EINVAL, naming both (baton_load takes it in its own size). */
int baton_open(baton_t* baton, const char* name, uint64_t size, baton_segment_t** out, int* restored,
               uint64_t* generation);

/* Load request (S9): fetches the newest copy from a live replica and takes
 * ownership here. BATON_ENOENT if no reachable node holds it. */
int baton_load(baton_t* baton, const char* name, baton_segment_t** out, uint64_t* generation);

/* The segment's memory and size; NULL / 0 for an invalid handle. */
void* baton_segment_data(baton_segment_t* segment);
uint64_t baton_segment_size(baton_segment_t* segment);

/* Snapshots the segment as a new generation and replicates it (S5). On
 * return the generation is the memory as it was at the call: the
 * application may write on at once. Durability is baton_wait's.
 *
 * Daemon mode, a segment of at most 1 MiB whose commit wrote at most 64 KiB
 * (in at most 64 ranges): the commit is posted. The library copies what was
 * written into a slot of a log it shares with batond, numbers the
 * generation itself and returns without waiting for batond (up to 16
 * posted commits may be untaken; the 17th waits for a slot, and fails with
 * BATON_EUNAVAIL, not posted, after BATON_COMMIT_TIMEOUT_MS). If batond
 * refuses a posted commit (a newer owner: BATON_EFENCED), the next
 * baton_commit or baton_wait of the segment returns that error; the
 * generations posted from the refused one on are no generations. A posted
 * commit outlives its application: batond takes it even when the process
 * exits or dies right after the call. BATON_POST_COMMITS=0 in the
 * environment makes every commit wait until batond has taken it, so that
 * a refusal fails that call. */
int baton_commit(baton_segment_t* segment, uint64_t* generation);

/* Only what changed is copied: a commit copies the chunks written since the
 * previous one, found by the kernel's write tracking (Linux 6.7 or newer;
 * in daemon mode the client library tracks the application's mapping), or
 * everything where it cannot. An application that knows what it wrote can
 * say so with baton_commit_ranges(): `n` (offset, length) ranges written
 * since its previous commit of this segment, added to what tracking found.
 * It promises nothing else changed (n = 0 with ranges not NULL: nothing
 * changed; ranges NULL: the same as baton_commit()). BATON_EINVAL for a
 * range past the segment's end, ranges NULL with n > 0, or n above 2^30;
 * BATON_ENOMEM when the list cannot be held. See docs/user-guide.md, "What a
 * commit copies". Set BATON_TRACK_WRITES=0 in the environment (or
 * no_write_tracking in baton_config_t) when something other than this
 * process's writes through baton_segment_data() changes a segment (DMA, a
 * child process): commits then copy whole segments. */
typedef struct baton_range {
  uint64_t offset;
  uint64_t length;
} baton_range_t;
int baton_commit_ranges(baton_segment_t* segment, const baton_range_t* ranges, size_t n, uint64_t* generation);

/* Waits until k replicas hold `generation` or newer under the current owner
 * epoch. k = BATON_DURABLE waits for a majority of the segment's replica set,
 * and never fewer than a majority of the replication factor while that many
 * peers are reachable (a set left short while peers could fill it
 * acknowledges nothing until it is filled; with fewer peers reachable, say a
 * node not up yet, a majority of what there is): a generation acknowledged
 * so survives any failover (see docs/architecture.md). BATON_ETIMEDOUT after
 * timeout_ms; with batond (daemon mode), also when batond has not answered a
 * second after it (stopped or overloaded: its late answer is dropped). */
#define BATON_DURABLE UINT32_MAX
int baton_wait(baton_segment_t* segment, uint64_t generation, uint32_t k, uint32_t timeout_ms);

/* Unregisters: local memory and the handle go; replicas keep their copies. */
int baton_unregister(baton_segment_t* segment);

/* Deletes segment `name` everywhere: its owner (fenced, wherever it runs),
 * its replicas, its records and its copies in global storage. The next
 * baton_open of the name starts fresh (restored = 0): an application calls
 * it on a clean exit (S11). Unregister the segment first: BATON_EBUSY while
 * an application on this node holds it. BATON_ENOENT if there is no such
 * segment (a clean exit counts that as done: on a node without replicas
 * the unregister already let go of everything); BATON_EUNAVAIL if too few nodes could be reached (it may be
 * deleted on some: call it again); BATON_EIO if global storage could not be
 * marked (deleted on the nodes: call it again once the directory can be
 * written, or its copies there come back after every node restarted). */
int baton_delete(baton_t* baton, const char* name);

/* Reports a performance metric of this application to its node's batond
 * (S17): `name` (1..63 printable characters) and a finite `value`, e.g. a
 * request's latency in ms. A service group whose `metric` is `name` fails
 * over when the value stays above its `slow_above` for `slow_for_ms`
 * (docs/operations.md). Daemon mode only (BATON_EINVAL embedded); cheap
 * enough for a few reports a second, not per request. */
int baton_report(baton_t* baton, const char* name, double value);

/* Standby instances (S16). A service group with standby_instances = true
 * starts its application ahead of time on its standby nodes, with
 * BATON_ROLE=standby and BATON_PROMOTE_FD in its environment. Such an
 * instance prepares what it can (connect to batond, load its code, warm
 * caches), then calls baton_await_promotion() before it opens any segment:
 * it returns 0 once the group has failed over to this node and its
 * segments are loaded here; the instance then opens them as usual (the open
 * takes the node's ready copy over: no fetch) and serves. In a process not
 * started as a standby it returns 0 at once, so an application calls it
 * unconditionally. BATON_EUNAVAIL: batond retired this instance or went
 * away (exit); BATON_ETIMEDOUT after timeout_ms (negative: no limit);
 * BATON_EINVAL: BATON_PROMOTE_FD is not a descriptor. Opening a segment
 * before promotion would take it away from the active instance. */
int baton_await_promotion(int timeout_ms);

/* A static string naming an error code. */
const char* baton_strerror(int err);

/* The message of the last failed call on this thread ("" if none). */
const char* baton_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* BATON_BATON_H */
