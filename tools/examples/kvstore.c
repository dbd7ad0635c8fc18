/* baton-kv: a small key-value service whose state lives in a Baton segment.
 *
 *   baton-kv --socket PATH [--name kv] [--batches N] [--every-ms MS] [--size-kib K] [--slots S]
 *            [--dump DIR] [--hold] [--report-metric NAME [--slow-file F]]
 *
 * Start-up follows S11: open the segment by name; if a copy existed anywhere
 * it is restored and the service resumes from its last committed batch, else
 * it starts empty. Each batch applies 64 deterministic updates (so a resumed
 * run continues the same sequence), commits, and waits until the generation
 * is durable (a majority of the segment's replicas hold it). With --dump, every durable state is written to
 * DIR/committed.bin and a restored one to DIR/restored.bin (for byte-exact
 * checks). --every-ms paces the batches (a service rather than a load
 * generator). --size-kib makes the segment larger than the table (the rest
 * stays zero; a failover still moves all of it). --slots sizes the table
 * itself (16384 slots of 16 bytes, 256 KiB, by default; 255 make the whole
 * state 4 KiB), and the keys it holds are three quarters of that. --hold keeps serving
 * nothing after the batches, until killed. --report-metric reports each
 * batch's time (update, commit, durable wait) in ms to batond under NAME
 * (baton_report); while file F exists each batch takes 100 ms longer (an
 * application slowed down, for tests and the demo). One line per event on
 * stdout.
 *
 * Started as a standby instance (a group with standby_instances; batond
 * sets BATON_ROLE=standby) it connects, then waits in
 * baton_await_promotion() and opens its segment only once promoted; it
 * exits quietly when retired. */
#include <baton/baton.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The table's size (--slots), and how many distinct keys go into it:
 * three quarters, so that it never fills. */
static uint64_t slots = 16384;
static uint64_t keys = 12288;

struct entry {
  uint64_t key;
  uint64_t value;
};

struct kv {
  uint64_t batches;  /* committed batches so far */
  uint64_t updates;
  struct entry slot[]; /* `slots` of them */
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static void put(struct kv* kv, uint64_t key, uint64_t value) {
  uint64_t i = (key * 0x9E3779B97F4A7C15ull) % slots;
  while (kv->slot[i].key != 0 && kv->slot[i].key != key) i = (i + 1) % slots;
  kv->slot[i].key = key;
  kv->slot[i].value = value;
}

static int dump(const char* dir, const char* file, const void* p, size_t n) {
  char tmp[512], path[512];
  snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, file);
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE* f = fopen(tmp, "wb");
  if (f == NULL) return -1;
  int ok = fwrite(p, 1, n, f) == n;
  ok &= fflush(f) == 0 && fsync(fileno(f)) == 0;
  fclose(f);
  return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* A whole non-negative decimal number, or -1. */
static long number(const char* s) {
  char* end;
  errno = 0;
  const long v = strtol(s, &end, 10);
  return errno == 0 && end != s && *end == '\0' && v >= 0 ? v : -1;
}

int main(int argc, char** argv) {
  const char* socket_path = NULL;
  const char* name = "kv";
  const char* dump_dir = NULL;
  long batches = 50;
  long every_ms = 0;
  long size_kib = 0;
  long heap_mib = 0;
  long slot_count = (long)slots;
  const char* metric = NULL;
  const char* slow_file = NULL;
  int hold = 0;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--socket") && i + 1 < argc) socket_path = argv[++i];
    else if (!strcmp(argv[i], "--name") && i + 1 < argc) name = argv[++i];
    else if (!strcmp(argv[i], "--batches") && i + 1 < argc) batches = number(argv[++i]);
    else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump_dir = argv[++i];
    else if (!strcmp(argv[i], "--every-ms") && i + 1 < argc) every_ms = number(argv[++i]);
    else if (!strcmp(argv[i], "--size-kib") && i + 1 < argc) size_kib = number(argv[++i]);
    else if (!strcmp(argv[i], "--heap-mib") && i + 1 < argc) heap_mib = number(argv[++i]);
    else if (!strcmp(argv[i], "--slots") && i + 1 < argc) slot_count = number(argv[++i]);
    else if (!strcmp(argv[i], "--report-metric") && i + 1 < argc) metric = argv[++i];
    else if (!strcmp(argv[i], "--slow-file") && i + 1 < argc) slow_file = argv[++i];
    else if (!strcmp(argv[i], "--hold")) hold = 1;
    else {
      fprintf(stderr, "usage: baton-kv --socket PATH [--name kv] [--batches N] [--every-ms MS] [--size-kib K] [--slots S] [--heap-mib M] [--dump DIR] [--hold] "
              "[--report-metric NAME [--slow-file F]]\n");
      return 64;
    }
  }
  if (socket_path == NULL) {
    fprintf(stderr, "baton-kv: --socket is required\n");
    return 64;
  }
  if (batches < 0 || every_ms < 0 || size_kib < 0 || heap_mib < 0) {
    fprintf(stderr, "baton-kv: --batches, --every-ms, --size-kib and --heap-mib take a whole number >= 0\n");
    return 64;
  }
  if (slot_count < 4 || slot_count > (1l << 24)) {
    fprintf(stderr, "baton-kv: --slots takes a whole number from 4 to %ld\n", 1l << 24);
    return 64;
  }
  slots = (uint64_t)slot_count;
  keys = slots * 3 / 4;
  const size_t state = sizeof(struct kv) + slots * sizeof(struct entry);
  setvbuf(stdout, NULL, _IOLBF, 0);
  // --heap-mib: private memory beside the checkpointed state, as a real
  // application's working set (its teardown at death is what a pidfd waits for).
  if (heap_mib > 0) {
    char* heap = malloc((size_t)heap_mib << 20);
    if (heap == NULL) {
      fprintf(stderr, "baton-kv: no %ld MiB of heap\n", heap_mib);
      return 1;
    }
    memset(heap, 1, (size_t)heap_mib << 20);
  }
  baton_t* b;
  baton_segment_t* seg;
  int restored = 0;
  uint64_t gen = 0;
  if (baton_connect(socket_path, &b) != 0) {
    fprintf(stderr, "baton-kv: %s\n", baton_last_error());
    return 1;
  }
  const char* role = getenv("BATON_ROLE");
  if (role != NULL && strcmp(role, "standby") == 0) {
    printf("standby: waiting to be promoted\n");
    if (baton_await_promotion(-1) != 0) {
      printf("standby: retired (%s)\n", baton_last_error());
      baton_stop(b);
      return 0;
    }
    printf("standby: promoted\n");
  }
  double t0 = now_ms();
  if (baton_open(b, name, (uint64_t)size_kib * 1024 > state ? (uint64_t)size_kib * 1024 : state,
                 &seg, &restored, &gen) != 0) {
    fprintf(stderr, "baton-kv: %s\n", baton_last_error());
    return 1;
  }
  struct kv* kv = baton_segment_data(seg);
  if (restored) {
    const double ms = now_ms() - t0;
    /* When it could serve, on the clock batond's events use (for benchmarks). */
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    /* The file first: whoever reads the line may look at it at once. */
    if (dump_dir != NULL && dump(dump_dir, "restored.bin", kv, state) != 0) perror("dump");
    printf("serving_at_us=%llu\n",
           (unsigned long long)wall.tv_sec * 1000000ull + (unsigned long long)wall.tv_nsec / 1000);
    printf("restored generation=%llu batches=%llu in %.3f ms\n", (unsigned long long)gen,
           (unsigned long long)kv->batches, ms);
  } else {
    printf("fresh start (no copy anywhere)\n");
  }
  uint64_t first = kv->batches;
  static double commit_us[4096]; /* the last 4096 commit calls */
  const size_t timed = batches < 4096 ? (size_t)batches : 4096;
  for (uint64_t n = first; n < first + (uint64_t)batches; ++n) {
    const double batch_t0 = now_ms();
    if (slow_file != NULL && access(slow_file, F_OK) == 0) usleep(100 * 1000);
    for (int i = 0; i < 64; ++i) {
      uint64_t u = kv->updates++;
      put(kv, (u * 2654435761u) % keys + 1, u);
    }
    kv->batches = n + 1;
    const double commit_t0 = now_ms();
    const int committed = baton_commit(seg, &gen);
    commit_us[(n - first) % 4096] = (now_ms() - commit_t0) * 1e3; /* the pause: the call until the snapshot is taken */
    if (committed != 0 || baton_wait(seg, gen, BATON_DURABLE, 10000) != 0) {
      fprintf(stderr, "baton-kv: commit: %s\n", baton_last_error());
      return 1;
    }
    if (dump_dir != NULL && dump(dump_dir, "committed.bin", kv, state) != 0) perror("dump");
    printf("batch=%llu generation=%llu durable\n", (unsigned long long)kv->batches, (unsigned long long)gen);
    if (metric != NULL && baton_report(b, metric, now_ms() - batch_t0) != 0)
      fprintf(stderr, "baton-kv: report: %s\n", baton_last_error());
    if (every_ms > 0) usleep((useconds_t)every_ms * 1000);
  }
  qsort(commit_us, timed, sizeof(double), by_value);
  printf("served %ld batches; commit call p50 %.1f us, longest %.1f us\n", batches,
         timed > 0 ? commit_us[timed / 2] : 0.0, timed > 0 ? commit_us[timed - 1] : 0.0);
  while (hold) pause();
  baton_stop(b);
  return 0;
}
