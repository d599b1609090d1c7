/* Runtime of the native engine: instruction-set dispatch, a small thread pool, the plan executor and the
 * exported C ABI (called from Python through ctypes; no Python or torch headers).
 *
 * Scheduling. With one image at a time (plan mode 0), every operation is cut into chunks, each thread owning
 * a share of them (see job_intra). A chunk starts once the chunks of the previous operation that write what
 * it reads are done (plan->deps, from the pixel spans of the kernels; otherwise once the whole previous
 * operation is), and once every operation before that one is complete, so that at most two operations are
 * in flight: a thread that finished its share moves on instead of waiting for the slowest chunk of the op.
 * No thread ever waits for another thread to *arrive*, only for claimed work to finish, so a thread that the
 * OS does not schedule (a busy machine) costs at most the chunk it holds and the others carry on. With one
 * image per thread (mode 1), threads claim whole images. Idle workers spin for a short while, then sleep on
 * a condition variable.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sn_native.h"
#include "sn_vtab.h"

extern const sn_vtab sn_vtab_generic;
#if SN_HAVE_AVX2
extern const sn_vtab sn_vtab_avx2;
#endif
#if SN_HAVE_AVX512
extern const sn_vtab sn_vtab_avx512;
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* ------------------------------------------------------------------------------------------- ISA ------- */
/* 1 if this CPU has the named feature (a string literal, as __builtin_cpu_supports takes), else 0 */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define CPU_HAS(feature) (__builtin_cpu_init(), __builtin_cpu_supports(feature) ? 1 : 0)
#else
#define CPU_HAS(feature) 0
#endif

static int cpu_isa(void)
{
    if (CPU_HAS("avx512f") && CPU_HAS("avx512vl") && CPU_HAS("avx512bw") && CPU_HAS("avx512dq")) return 2;
    if (CPU_HAS("avx2") && CPU_HAS("fma")) return 1;
    return 0;
}

static const sn_vtab *vtab_for(int isa)
{
#if SN_HAVE_AVX512
    if (isa >= 2) return &sn_vtab_avx512;
#endif
#if SN_HAVE_AVX2
    if (isa >= 1) return &sn_vtab_avx2;
#endif
    (void)isa;
    return &sn_vtab_generic;
}

/* Bit i set: instruction set i is compiled in and this CPU runs it. */
SN_API int sn_isa_mask(void)
{
    const int cpu = cpu_isa();
    int m = 1;
#if SN_HAVE_AVX2
    if (cpu >= 1) m |= 2;
#endif
#if SN_HAVE_AVX512
    if (cpu >= 2) m |= 4;
#endif
    return m;
}

/* 1 if this CPU has AVX-512 VNNI, which the AVX-512 int8 kernels use (else int8 runs the AVX2 ones) */
SN_API int sn_cpu_vnni(void) { return CPU_HAS("avx512vnni"); }

/* The AVX-512 int8 depthwise kernel that sums a kernel row per instruction needs AVX-512 VBMI (vpermt2b); 1
 * while it is used. sn_int8_dw_rows_enable(0) runs the tap-word kernel instead (both are tested). */
int sn_int8_dw_rows = 0;

__attribute__((constructor)) static void init_int8_dw_rows(void) { sn_int8_dw_rows = CPU_HAS("avx512vbmi"); }

/* enable (where the CPU has AVX-512 VBMI) or disable the row kernel; returns whether it was in use */
SN_API int sn_int8_dw_rows_enable(int on)
{
    const int was = sn_int8_dw_rows;
    sn_int8_dw_rows = on && CPU_HAS("avx512vbmi");
    return was;
}

SN_API int sn_abi_version(void) { return SN_ABI_VERSION; }
SN_API int sn_vector_width(int isa) { return vtab_for(isa)->vw; }
SN_API int sn_sizeof_op(void) { return (int)sizeof(sn_op); }
SN_API int sn_sizeof_plan(void) { return (int)sizeof(sn_plan); }

/* Weights of op rearranged for instruction set isa: sn_pack_size floats (0: the op needs none) written by
 * sn_pack into wp; op->w must be set. */
SN_API int64_t sn_pack_size(int isa, const sn_op *op) { return vtab_for(isa)->pack_size(op); }
SN_API void sn_pack(int isa, const sn_op *op, float *wp) { vtab_for(isa)->pack(op, wp); }

/* ------------------------------------------------------------------------------------------ wait ------- */
/* Waiting is spin-then-sleep: a short spin (cheap when both threads run), then a futex (Linux) or a short
 * sleep, so that on a busy machine a waiting thread gives its CPU to the one it waits for. */
static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double g_idle_spin = -1.0; /* seconds an idle worker spins before sleeping */
static double g_wait_spin = -1.0; /* the longest a thread spins on a dependency before sleeping */

static void read_spin_env(void)
{
    if (g_idle_spin < 0) {
        const char *s = getenv("SHUFFLENET_NATIVE_SPIN_US");
        const double us = s ? atof(s) : 200.0; /* not a number: 0; clamped to [0, 100 ms] */
        g_wait_spin = (us > 0.0 ? (us < 1e5 ? us : 1e5) : 0.0) * 1e-6;
        g_idle_spin = g_wait_spin;
    }
}

static atomic_int g_waiters; /* threads asleep in wait_for */

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
static void futex_wait(atomic_int *addr, int val)
{
    struct timespec to = {0, 2000000}; /* 2 ms: a safety net, wake-ups are explicit */
    syscall(SYS_futex, (int *)addr, FUTEX_WAIT_PRIVATE, val, &to, NULL, 0);
}
static void futex_wake(atomic_int *addr)
{
    syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, 1 << 30, NULL, NULL, 0);
}
#else
static void futex_wait(atomic_int *addr, int val)
{
    (void)addr;
    (void)val;
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
}
static void futex_wake(atomic_int *addr) { (void)addr; }
#endif

/* *counter += d, waking sleepers */
static void signal_add(atomic_int *counter, int d)
{
    atomic_fetch_add(counter, d);
    if (atomic_load(&g_waiters) > 0) futex_wake(counter);
}

/* Spin budget of this thread, adapted to the waits it sees: a wait that outlasted the spin but not the longest
 * spin allowed would have been cheaper spun through (a futex wake-up costs tens of microseconds, more in a
 * virtual machine), so the budget grows to cover it; a longer wait means the thread we wait for was not
 * running (a busy machine, where spinning only takes CPU from it), and the budget halves. */
static _Thread_local double t_spin = -1.0;

/* Wait until *counter >= target (ge > 0), *counter == 0 (ge == 0), or (ge < 0) all bits of need are set in
 * *mask, where whoever sets a bit bumps *counter afterwards (so a sleeper on the counter wakes for it). */
static void wait_for(atomic_int *counter, int target, int ge, _Atomic uint64_t *mask, uint64_t need)
{
#define SN_DONE(v) (ge > 0 ? (v) >= target : ge == 0 ? (v) == 0 : (atomic_load(mask) & need) == need)
    int v = atomic_load(counter);
    if (SN_DONE(v)) return;
    read_spin_env();
    if (t_spin < 0) t_spin = g_wait_spin;
    const double t0 = mono_now();
    for (int i = 1;; i++) {
        CPU_RELAX();
        v = atomic_load(counter);
        if (SN_DONE(v)) return;
        if ((i & 63) == 0 && mono_now() - t0 > t_spin) break;
    }
    atomic_fetch_add(&g_waiters, 1);
    for (;;) {
        v = atomic_load(counter); /* before the mask: a bit set later bumps the counter past v */
        if (SN_DONE(v)) break;
        futex_wait(counter, v);
    }
    atomic_fetch_sub(&g_waiters, 1);
    const double waited = mono_now() - t0;
    if (waited <= g_wait_spin) {
        const double grown = 2.0 * t_spin > waited ? 2.0 * t_spin : waited;
        t_spin = grown < g_wait_spin ? grown : g_wait_spin;
    } else {
        t_spin = t_spin * 0.5 > 1e-6 ? t_spin * 0.5 : 1e-6;
    }
#undef SN_DONE
}

static void wait_at_least(atomic_int *counter, int target) { wait_for(counter, target, 1, NULL, 0); }

/* ------------------------------------------------------------------------------------------ pool ------- */
/* Jobs go through a ring of SN_JOB_SLOTS slots, so that the caller never waits for a worker to *leave* a job: a
 * worker that the OS ran late may still be walking through an old, finished job (touching nothing but that
 * job's own counters) while the caller has returned and started the next ones. A slot is reused, and its old
 * job freed, only once no worker is inside it. */
#define CLOSED 1u
#define SN_JOB_SLOTS 4
typedef void (*job_fn)(void *arg, int tid);

typedef struct {
    atomic_int active;    /* workers inside this slot's job */
    job_fn fn;
    void *arg;
    void (*dtor)(void *); /* frees arg when the slot is reused */
    int want;             /* participants including the caller */
} job_slot;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nworkers;
    pthread_t th[256];
    atomic_uint cur;      /* (sequence << 1) | CLOSED; the job is in slot[sequence % SN_JOB_SLOTS] */
    atomic_int sleepers;
    unsigned seq;
    job_slot slot[SN_JOB_SLOTS];
} sn_pool;

static sn_pool g_pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .cur = CLOSED};
static pthread_mutex_t g_run_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */

static void *worker_main(void *p)
{
    const int tid = (int)(intptr_t)p;
    sn_pool *pl = &g_pool;
    unsigned last = atomic_load(&pl->cur);
    read_spin_env();
    for (;;) {
        unsigned c = atomic_load(&pl->cur);
        if (c == last || (c & CLOSED)) {
            const double t0 = mono_now();
            for (int i = 1; c == last || (c & CLOSED); i++) {
                CPU_RELAX();
                c = atomic_load(&pl->cur);
                if ((i & 63) == 0 && mono_now() - t0 > g_idle_spin) break;
            }
        }
        if (c == last || (c & CLOSED)) {
            pthread_mutex_lock(&pl->mu);
            atomic_fetch_add(&pl->sleepers, 1);
            for (;;) {
                c = atomic_load(&pl->cur);
                if (c != last && !(c & CLOSED)) break;
                pthread_cond_wait(&pl->cv, &pl->mu);
            }
            atomic_fetch_sub(&pl->sleepers, 1);
            pthread_mutex_unlock(&pl->mu);
        }
        last = c;
        job_slot *js = &pl->slot[(c >> 1) % SN_JOB_SLOTS];
        atomic_fetch_add(&js->active, 1);
        /* still the published job (not closed, slot not reused)? then its fields are stable */
        if (atomic_load(&pl->cur) == c && tid < js->want) js->fn(js->arg, tid);
        signal_add(&js->active, -1);
    }
    return NULL;
}

static void pool_reset_after_fork(void)
{
    /* threads do not survive fork(): the child starts with an empty pool (old jobs leak, harmlessly) */
    g_pool.nworkers = 0;
    pthread_mutex_init(&g_pool.mu, NULL);
    pthread_cond_init(&g_pool.cv, NULL);
    atomic_store(&g_pool.cur, CLOSED);
    atomic_store(&g_pool.sleepers, 0);
    for (int i = 0; i < SN_JOB_SLOTS; i++) {
        atomic_store(&g_pool.slot[i].active, 0);
        g_pool.slot[i].arg = NULL;
        g_pool.slot[i].dtor = NULL;
    }
    atomic_store(&g_waiters, 0);
    pthread_mutex_init(&g_run_mu, NULL);
}

/* Start workers up to nworkers; returns how many exist. */
static int pool_ensure(int nworkers)
{
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, pool_reset_after_fork);
        atfork_done = 1;
    }
    if (nworkers > 255) nworkers = 255;
    while (g_pool.nworkers < nworkers) {
        const int tid = g_pool.nworkers + 1;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 1 << 20);
        const int rc = pthread_create(&g_pool.th[tid - 1], &at, worker_main, (void *)(intptr_t)tid);
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        pthread_detach(g_pool.th[tid - 1]);
        g_pool.nworkers++;
    }
    return g_pool.nworkers;
}

/* Run fn(arg, tid) on the caller (tid 0) and up to T - 1 workers. fn must finish the whole job even if only
 * the caller runs it (workers join whenever the OS runs them) and must let the caller know when all work is
 * done (the caller waits for that itself). Returns when the caller's fn returns. Returns 1 if the pool took
 * arg (then dtor(arg) runs later, when no worker can be inside the job any more), 0 if the caller keeps it
 * (no workers were involved). Callers hold g_run_mu. */
static int pool_run(job_fn fn, void *arg, int T, void (*dtor)(void *))
{
    sn_pool *pl = &g_pool;
    if (T > 1) {
        const int have = pool_ensure(T - 1);
        if (have + 1 < T) T = have + 1;
    }
    if (T <= 1) {
        fn(arg, 0);
        return 0;
    }
    job_slot *js = &pl->slot[(pl->seq + 1) % SN_JOB_SLOTS];
    wait_for(&js->active, 0, 0, NULL, 0); /* a worker SN_JOB_SLOTS jobs late: rare */
    if (js->dtor && js->arg) js->dtor(js->arg);
    js->fn = fn;
    js->arg = arg;
    js->dtor = dtor;
    js->want = T;
    pl->seq++;
    atomic_store(&pl->cur, pl->seq << 1);
    if (atomic_load(&pl->sleepers) > 0) {
        pthread_mutex_lock(&pl->mu);
        pthread_cond_broadcast(&pl->cv);
        pthread_mutex_unlock(&pl->mu);
    }
    fn(arg, 0);
    atomic_store(&pl->cur, (pl->seq << 1) | CLOSED);
    return 1;
}

/* ------------------------------------------------------------------------------------- executor ------- */
#define SN_MAX_SLOTS 64
#define SN_MAX_OPS 1024
#define SN_PAD_R 8

/* Progress of one op of a job: chunks finished, and which (the first 64). One cache line, written by whoever
 * finishes a chunk: both updates then cost one transfer of the line between cores. */
typedef struct {
    atomic_int n;
    _Atomic uint64_t bits;
} __attribute__((aligned(64))) sn_progress;

typedef struct {
    const sn_plan *plan;      /* only read while the job runs (a late worker may see it finished: see pool) */
    const sn_vtab *vt;
    float *x, *y;
    int T, nops, batch;       /* copies: what a late worker reads */
    int nch[SN_MAX_OPS];      /* chunks per op (mode 0) */
    sn_progress *done;        /* of op q at done[q] (mode 0) */
    _Atomic uint64_t *range;  /* unclaimed chunks of thread t in op q at range[(q * T + t) * SN_PAD_R]: hi << 32 | lo */
    const uint64_t *deps;     /* plan->deps when it is for this job's T and instruction set, else NULL */
    atomic_int imgs_next, imgs_done;
} sn_job;

/* Claim the next chunk of a range from the front (its owner) or the back (a thief); -1 when empty. */
static int range_pop(_Atomic uint64_t *r, int back)
{
    uint64_t old = atomic_load(r);
    for (;;) {
        const uint32_t lo = (uint32_t)old, hi = (uint32_t)(old >> 32);
        if (lo >= hi) return -1;
        const uint64_t nw = back ? ((uint64_t)(hi - 1) << 32 | lo) : ((uint64_t)hi << 32 | (lo + 1));
        if (atomic_compare_exchange_weak(r, &old, nw)) return back ? (int)(hi - 1) : (int)lo;
    }
}

static void resolve(const sn_job *j, int img, int set, float **slot)
{
    const sn_plan *p = j->plan;
    for (int s = 2; s < p->nslots; s++) slot[s] = p->ws[(ptrdiff_t)set * p->nslots + s];
    slot[0] = j->x + (ptrdiff_t)img * p->slot_img[0];
    slot[1] = j->y + (ptrdiff_t)img * p->slot_img[1];
}

/* A job that only serves resolve() for the calling thread (sn_profile, sn_check_schedule). */
static void local_job(sn_job *j, const sn_plan *plan, float *x, float *y)
{
    memset(j, 0, sizeof *j);
    j->plan = plan;
    j->x = x;
    j->y = y;
}

/* 1 when the chunks of op wait for the chunks of op - 1 they need (deps[op * 64 + c]), 0 when they wait for
 * the whole of op - 1 (no deps; the first op of an image; ops of more than 64 chunks) */
static int by_chunk(const uint64_t *deps, const int *nch, int op)
{
    return deps && op > 0 && nch[op] <= 64 && nch[op - 1] <= 64;
}

/* Mode 0: every thread walks through all ops in order. Thread t owns the t-th contiguous share of each op's
 * chunks (the kernels number chunks so that a share is one region of the image, which then stays in that
 * core's cache from op to op) and runs it from one end, front to back for even t and back to front for odd
 * t, then takes what is left of the others' shares from their other end. Two neighbouring shares thus finish
 * at their common border, at the same time, and start the next op away from it, where the chunks they need
 * are their own, finished first. A chunk of op k starts once op k - 2 is complete (so is everything before
 * it: some chunk of op k - 1 started, after op k - 3 was complete) and its chunks of op k - 1 are finished;
 * a thread that the OS does not run simply finds its shares taken. */
static void job_intra(void *arg, int tid)
{
    sn_job *j = (sn_job *)arg;
    const int nops = j->nops, T = j->T;
    float *slot[SN_MAX_SLOTS];
    for (int img = 0; img < j->batch; img++) {
        int resolved = 0; /* the plan is touched only after claiming work, i.e. while the job runs */
        for (int op = 0; op < nops; op++) {
            const int q = img * nops + op;
            if (q > 1) wait_at_least(&j->done[q - 2].n, j->nch[(op + 2 * nops - 2) % nops]);
            const int partial = by_chunk(j->deps, j->nch, op);
            if (q > 0 && !partial)
                wait_at_least(&j->done[q - 1].n, j->nch[op > 0 ? op - 1 : nops - 1]);
            _Atomic uint64_t *r = j->range + (ptrdiff_t)q * T * SN_PAD_R;
            for (int k = 0; k < T; k++) {
                const int v = (tid + k) % T;
                const int back = (v & 1) != (k != 0); /* the owner's end: front for even v; thieves the other */
                int c;
                while ((c = range_pop(&r[v * SN_PAD_R], back)) >= 0) {
                    if (partial)
                        wait_for(&j->done[q - 1].n, 0, -1, &j->done[q - 1].bits,
                                 j->deps[(ptrdiff_t)op * 64 + c]);
                    if (!resolved) {
                        resolve(j, img, 0, slot);
                        resolved = 1;
                    }
                    j->vt->run(&j->plan->ops[op], slot, j->plan->slot_cs, c, T);
                    if (c < 64) atomic_fetch_or(&j->done[q].bits, 1ull << c);
                    signal_add(&j->done[q].n, 1);
                }
            }
        }
    }
}

static void job_free(void *arg)
{
    sn_job *j = (sn_job *)arg;
    free((void *)j->range);
    free((void *)j->done);
    free(j);
}

static void job_batch(void *arg, int tid)
{
    sn_job *j = (sn_job *)arg;
    float *slot[SN_MAX_SLOTS];
    for (;;) {
        const int img = atomic_fetch_add(&j->imgs_next, 1);
        if (img >= j->batch) break;
        const sn_plan *p = j->plan;
        resolve(j, img, tid, slot);
        for (int op = 0; op < p->nops; op++) {
            const int n = j->vt->nchunks(&p->ops[op], 1);
            for (int c = 0; c < n; c++) j->vt->run(&p->ops[op], slot, p->slot_cs, c, 1);
        }
        signal_add(&j->imgs_done, 1);
    }
}

/* Thread count under contention (mode 0 only, where threads hand work to each other op by op), when the plan
 * asks for it (plan->adaptive, decided in Python: shufflenet/deploy/native/module.py::thread_plan). On a machine
 * whose cores are taken by other processes, the thread an op waits for is often not running, and one image
 * can then be faster on one thread. Each plan keeps the wall times of its last 8 runs with all threads and
 * with one; after 3 of each it runs the mode with the lower median, and every 16th run the other one, to
 * follow changes of load. On an idle machine that is the parallel mode (the serial probes cost 1/16 of the
 * runs). Guarded by g_run_mu. */
static long g_runs = 0, g_serial_runs = 0;

static double median8(const double *h, int n)
{
    double a[8];
    if (n > 8) n = 8;
    memcpy(a, h, sizeof(double) * (size_t)n);
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && a[k - 1] > a[k]; k--) {
            const double t = a[k];
            a[k] = a[k - 1];
            a[k - 1] = t;
        }
    return n % 2 ? a[n / 2] : 0.5 * (a[n / 2 - 1] + a[n / 2]);
}

/* 0: run with all threads, 1: with one */
static int choose_mode(sn_plan *p)
{
    const int np = p->nhist[0], ns = p->nhist[1];
    if (np < 3) return 0;
    if (ns < 3) return 1;
    const int best = median8(p->hist[1], ns) < median8(p->hist[0], np) ? 1 : 0;
    return (++p->tick % 16 == 0) ? 1 - best : best;
}

static void record_time(sn_plan *p, int mode, double seconds)
{
    p->hist[mode][p->nhist[mode] % 8] = seconds;
    p->nhist[mode]++;
    if (p->nhist[mode] >= 1 << 30) p->nhist[mode] = 8 + p->nhist[mode] % 8;
}

/* Counters since load: [runs in mode 0 with T > 1 requested, of which run on one thread (see above)]. */
SN_API void sn_stats(long *out)
{
    pthread_mutex_lock(&g_run_mu);
    out[0] = g_runs;
    out[1] = g_serial_runs;
    pthread_mutex_unlock(&g_run_mu);
}

/* Run a bound plan on x (slot 0) into y (slot 1) with T threads and instruction set isa.
 * Returns 0, or a negative error code. */
SN_API int sn_run(sn_plan *plan, int isa, int T, float *x, float *y)
{
    if (!plan || plan->nops <= 0 || plan->nops > SN_MAX_OPS || plan->nslots > SN_MAX_SLOTS) return -1;
    if (plan->nslots < 2 || plan->batch <= 0) return -2;
    if (T < 1) T = 1;
    sn_job *j = (sn_job *)calloc(1, sizeof(sn_job));
    if (!j) return -3;
    j->plan = plan;
    j->vt = vtab_for(isa);
    j->x = x;
    j->y = y;
    j->nops = plan->nops;
    j->batch = plan->batch;
    int rc = 0, owned = 0;
    pthread_mutex_lock(&g_run_mu);
    if (plan->mode == 1) {
        if (T > plan->nsets) T = plan->nsets;
        if (T > plan->batch) T = plan->batch;
        j->T = T;
        owned = pool_run(job_batch, j, T, job_free);
        wait_at_least(&j->imgs_done, plan->batch);
    } else {
        int mode = -1;
        if (T > 1) {
            g_runs++;
            if (plan->adaptive) {
                mode = choose_mode(plan);
                if (mode == 1) {
                    g_serial_runs++;
                    T = 1;
                }
            }
        }
        const double t0 = mono_now();
        j->T = T;
        for (int o = 0; o < plan->nops; o++) j->nch[o] = j->vt->nchunks(&plan->ops[o], T);
        const size_t nq = (size_t)plan->batch * plan->nops;
        j->done = (sn_progress *)aligned_alloc(64, nq * sizeof(sn_progress));
        j->range = (_Atomic uint64_t *)aligned_alloc(64, nq * (size_t)T * SN_PAD_R * sizeof(uint64_t));
        if (plan->deps && plan->deps_T == T && plan->deps_isa == isa) j->deps = plan->deps;
        if (!j->done || !j->range) {
            rc = -3;
        } else {
            for (size_t q = 0; q < nq; q++) {
                const uint64_t n = (uint64_t)j->nch[q % plan->nops];
                atomic_init(&j->done[q].n, 0);
                atomic_init(&j->done[q].bits, 0);
                for (int t = 0; t < T; t++)
                    atomic_init(&j->range[(q * T + t) * SN_PAD_R], (n * (t + 1) / T) << 32 | (n * t / T));
            }
            owned = pool_run(job_intra, j, T, job_free);
            /* the last op complete, and the one before (its chunks need not all be needed by the last) */
            wait_at_least(&j->done[nq - 1].n, j->nch[plan->nops - 1]);
            if (nq > 1)
                wait_at_least(&j->done[nq - 2].n, j->nch[(2 * plan->nops - 2) % plan->nops]);
            if (mode >= 0) record_time(plan, mode, mono_now() - t0);
        }
    }
    if (!owned) job_free(j);
    pthread_mutex_unlock(&g_run_mu);
    return rc;
}

/* Fill deps (nops * 64 entries) for plan->deps: bit d of deps[op * 64 + c] is set when chunk c of op, split
 * for T threads on instruction set isa, reads pixels that chunk d of op - 1 writes (op_span in sn_kernels.c;
 * all of op - 1's chunks where a span is not known). An op that reads neither as input nor as residual what
 * op - 1 writes needs none of it. Entries of ops with more than 64 chunks, or after one, are not used.
 * Returns 0, or a negative error code. */
SN_API int sn_plan_deps(const sn_plan *plan, int isa, int T, uint64_t *deps)
{
    if (!plan || !deps || plan->nops <= 0 || plan->nops > SN_MAX_OPS) return -1;
    if (T < 1) T = 1;
    const sn_vtab *vt = vtab_for(isa);
    memset(deps, 0, sizeof(uint64_t) * 64 * (size_t)plan->nops);
    for (int o = 1; o < plan->nops; o++) {
        const sn_op *op = &plan->ops[o], *pv = &plan->ops[o - 1];
        const int n = vt->nchunks(op, T), np = vt->nchunks(pv, T);
        if (n > 64 || np > 64) continue;
        if (op->src != pv->dst && op->res != pv->dst) continue;
        int64_t b[64][4]; /* what each chunk of op - 1 writes */
        int known[64];
        for (int d = 0; d < np; d++) known[d] = vt->span(pv, d, T, b[d]);
        for (int c = 0; c < n; c++) {
            int64_t a[4];
            const int span = vt->span(op, c, T, a);
            uint64_t need = 0;
            for (int d = 0; d < np; d++) {
                const int overlap = a[0] < a[1] && b[d][2] < b[d][3] && b[d][2] < a[1] && a[0] < b[d][3];
                if (!span || !known[d] || overlap) need |= 1ull << d;
            }
            deps[(ptrdiff_t)o * 64 + c] = need;
        }
    }
    return 0;
}

/* Run the plan on the calling thread in an order that the schedule of sn_run allows for T threads and that
 * is most likely to expose a missing dependency: whenever a chunk of the next op is allowed to start (its
 * needs met, as sn_run reads them from plan->deps), it runs before the remaining chunks of the current op,
 * chosen at random (seed). Beforehand every plane the ops write is filled with NaN (int8 quad planes: bytes of
 * 127), so that a chunk that ran before what it reads was written, or that overwrote what a chunk of the op
 * before still had to read, gives a different output. plan->deps must be for (T, isa). Returns 0, or a negative
 * error code. For tests. */
SN_API int sn_check_schedule(const sn_plan *plan, int isa, int T, float *x, float *y, uint64_t seed)
{
    if (!plan || plan->nops <= 0 || plan->nops > SN_MAX_OPS || plan->nslots > SN_MAX_SLOTS) return -1;
    if (plan->nslots < 2 || plan->batch <= 0 || plan->mode != 0) return -2;
    if (T < 2 || !plan->deps || plan->deps_T != T || plan->deps_isa != isa) return -4;
    const sn_vtab *vt = vtab_for(isa);
    sn_job j;
    local_job(&j, plan, x, y);
    const int nops = plan->nops;
    for (int o = 0; o < nops; o++) j.nch[o] = vt->nchunks(&plan->ops[o], T);
    float *slot[SN_MAX_SLOTS];
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
    pthread_mutex_lock(&g_run_mu);
    for (int img = 0; img < plan->batch; img++) {
        resolve(&j, img, 0, slot);
        for (int o = 0; o < nops; o++) { /* NaN into what the ops write (int8 quad planes: bytes of 127) */
            const sn_op *op = &plan->ops[o];
            const int flat = op->kind == SN_OP_GAP || op->kind == SN_OP_FC || op->kind == SN_OP_QGAP;
            const int quads = op->kind >= SN_OP_QPACK && op->kind <= SN_OP_QMAX;
            const int64_t cs = plan->slot_cs[op->dst], P = flat ? 1 : (int64_t)op->OH * op->OW;
            if (quads) {
                for (int q = op->dst_coff / 4; q < (op->dst_coff + op->cout + 3) / 4; q++) {
                    int32_t *p = (int32_t *)slot[op->dst] + q * cs;
                    for (int64_t i = 0; i < P; i++) p[i] = 0x7F7F7F7F;
                }
                continue;
            }
            for (int c = 0; c < op->cout; c++) {
                float *p = slot[op->dst] + (flat ? op->dst_coff + c : (op->dst_coff + c) * cs);
                for (int64_t i = 0; i < P; i++) p[i] = NAN;
            }
        }
        uint64_t fin = 0, next = 0; /* finished chunks of op a and of op a + 1 */
        for (int a = 0; a < nops; a++, fin = next, next = 0) {
            const sn_op *op = &plan->ops[a];
            if (j.nch[a] > 64) { /* no chunk of it ran early (by_chunk is 0 for it and the next op) */
                for (int c = 0; c < j.nch[a]; c++) vt->run(op, slot, plan->slot_cs, c, T);
                continue;
            }
            const int early = a + 1 < nops && by_chunk(plan->deps, j.nch, a + 1);
            while (fin != (j.nch[a] == 64 ? ~0ull : (1ull << j.nch[a]) - 1)) {
                int cand[64], nc = 0, w = 0;
                for (int c = 0; early && c < j.nch[a + 1]; c++) {
                    const uint64_t need = plan->deps[(ptrdiff_t)(a + 1) * 64 + c];
                    if (!(next >> c & 1) && (fin & need) == need) cand[nc++] = c;
                }
                if (nc) {
                    w = 1;
                } else {
                    for (int c = 0; c < j.nch[a]; c++)
                        if (!(fin >> c & 1)) cand[nc++] = c;
                }
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                const int c = cand[rng % (uint64_t)nc];
                vt->run(op + w, slot, plan->slot_cs, c, T);
                if (w)
                    next |= 1ull << c;
                else
                    fin |= 1ull << c;
            }
        }
    }
    pthread_mutex_unlock(&g_run_mu);
    return 0;
}

/* --------------------------------------------------------------------------- channels-last shuffle ---- */
typedef struct {
    const sn_vtab *vt;
    const float *in;
    float *out;
    int64_t P;
    int C, g, nchunks, stream;
    atomic_int next, done;
} shuf_job;

static void job_shuffle(void *arg, int tid)
{
    (void)tid;
    shuf_job *j = (shuf_job *)arg;
    for (;;) {
        const int c = atomic_fetch_add(&j->next, 1);
        if (c >= j->nchunks) break;
        const int64_t p0 = j->P * c / j->nchunks, p1 = j->P * (c + 1) / j->nchunks;
        j->vt->shuffle(j->in, j->out, p0, p1, j->C, j->g, j->stream);
        signal_add(&j->done, 1);
    }
}

/* out[p][i * g + j] = in[p][j * (C / g) + i] for P rows of C floats (a channels-last tensor). */
SN_API int sn_channel_shuffle(const float *in, float *out, int64_t P, int C, int g, int isa, int T)
{
    if (!in || !out || P < 0 || C <= 0 || g <= 0 || C % g) return -1;
    if (P == 0) return 0;
    shuf_job *j = (shuf_job *)calloc(1, sizeof(shuf_job));
    if (!j) return -3;
    j->vt = vtab_for(isa);
    j->in = in;
    j->out = out;
    j->P = P;
    j->C = C;
    j->g = g;
    const double bytes = (double)P * C * 4.0;
    j->stream = bytes > 16.0 * 1024 * 1024; /* larger than the caches: streaming stores */
    int n = (int)(bytes / (256.0 * 1024.0));
    if (T <= 1 || n < 2) n = 1, T = 1;
    if (n > 8 * T) n = 8 * T;
    if (n > P) n = (int)P;
    j->nchunks = n;
    pthread_mutex_lock(&g_run_mu);
    const int owned = pool_run(job_shuffle, j, T, free);
    wait_at_least(&j->done, n);
    if (!owned) free(j);
    pthread_mutex_unlock(&g_run_mu);
    return 0;
}

/* ------------------------------------------------------------------------------------------ profile ---- */
static double thread_seconds(void)
{
    struct timespec ts;
#ifdef CLOCK_THREAD_CPUTIME_ID
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Run the plan on the calling thread only, every op cut into the chunks it gets with T threads (1: none), all
 * of them run here in order. Adds to seconds[op] the CPU time the op takes and to share[op] that of its largest
 * share (the chunks sn_run gives one thread first: what the op costs with T threads that never steal), and
 * writes its chunk count to nchunks[op]. Thread CPU time is robust to other processes taking the CPU. Returns 0
 * or a negative error code. */
SN_API int sn_profile(const sn_plan *plan, int isa, int T, float *x, float *y, double *seconds, double *share,
                      int32_t *nchunks)
{
    if (!plan || plan->nops <= 0 || plan->nslots > SN_MAX_SLOTS || plan->nslots < 2) return -1;
    if (T < 1) T = 1;
    const sn_vtab *vt = vtab_for(isa);
    sn_job j;
    local_job(&j, plan, x, y);
    float *slot[SN_MAX_SLOTS];
    pthread_mutex_lock(&g_run_mu);
    for (int img = 0; img < plan->batch; img++) {
        resolve(&j, img, 0, slot);
        for (int op = 0; op < plan->nops; op++) {
            const int n = vt->nchunks(&plan->ops[op], T);
            double most = 0.0, t0 = thread_seconds();
            const double start = t0;
            for (int t = 0; t < T; t++) {
                for (int c = n * t / T; c < n * (t + 1) / T; c++) vt->run(&plan->ops[op], slot, plan->slot_cs, c, T);
                const double t1 = thread_seconds();
                most = t1 - t0 > most ? t1 - t0 : most;
                t0 = t1;
            }
            seconds[op] += t0 - start;
            share[op] += most;
            nchunks[op] = n;
        }
    }
    pthread_mutex_unlock(&g_run_mu);
    return 0;
}
