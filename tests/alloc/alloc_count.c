/* Heap allocation counter per thread, for tests only (docs/performance.md, "Allocations per
 * request"): an LD_PRELOAD shim that replaces glibc's malloc family and counts, per thread,
 * every call made by any code in the process (our objects, the static wolfSSL, and the shared
 * nghttp2, jansson, libc itself), then forwards it to glibc's own allocator.
 *
 * SOTH_ALLOC_COUNT_FILE=<path> names a file the shim creates and maps shared: a header and one
 * slot per thread (struct below), written only by its thread, read by the test at any time.
 * Without that variable the shim forwards and counts nothing. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t sz);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);
extern void *__libc_valloc(size_t n);
extern void *__libc_pvalloc(size_t n);

#define AC_MAGIC 0x31434f4c4c41434fULL /* "OCALLOC1" */
#define AC_SLOTS 1024

/* One 64-byte slot per thread: its kernel thread id and its counts since it first allocated. */
struct ac_slot {
    int32_t tid;
    int32_t pad;
    uint64_t allocs;   /* malloc, calloc, memalign family, realloc(NULL, n) */
    uint64_t reallocs; /* realloc of a live block (to a non-zero size) */
    uint64_t frees;    /* free of a non-NULL pointer, realloc(p, 0) */
    uint64_t bytes;    /* bytes asked for by allocs and reallocs */
    uint64_t spare[3];
};
_Static_assert(sizeof(struct ac_slot) == 64, "slot is one cache line");

struct ac_file {
    uint64_t magic;
    uint32_t slot_size, nslots;
    uint32_t used; /* slots handed out (a thread claims one on its first call) */
    uint32_t pad[11];
    struct ac_slot slot[AC_SLOTS];
};

static struct ac_file *ac_map;
static __thread struct ac_slot *ac_mine __attribute__((tls_model("initial-exec")));
static __thread int ac_none __attribute__((tls_model("initial-exec")));

__attribute__((constructor)) static void ac_init(void)
{
    const char *path = getenv("SOTH_ALLOC_COUNT_FILE");
    if (!path || !*path)
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (ftruncate(fd, sizeof(struct ac_file)) == 0) {
        void *m = mmap(NULL, sizeof(struct ac_file), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            struct ac_file *f = m;
            f->slot_size = sizeof(struct ac_slot);
            f->nslots = AC_SLOTS;
            __atomic_store_n(&f->magic, AC_MAGIC, __ATOMIC_RELEASE);
            __atomic_store_n(&ac_map, f, __ATOMIC_RELEASE);
        }
    }
    close(fd);
}

static struct ac_slot *ac_slot(void)
{
    if (ac_mine)
        return ac_mine;
    struct ac_file *f = __atomic_load_n(&ac_map, __ATOMIC_ACQUIRE);
    if (!f || ac_none)
        return NULL;
    uint32_t i = __atomic_fetch_add(&f->used, 1, __ATOMIC_RELAXED);
    if (i >= AC_SLOTS) {
        ac_none = 1;
        return NULL;
    }
    struct ac_slot *s = &f->slot[i];
    __atomic_store_n(&s->tid, (int32_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
    ac_mine = s;
    return s;
}

/* Single writer per slot: a relaxed load and store is enough for a reader that only needs
 * each counter untorn. */
static inline void ac_add(uint64_t *c, uint64_t v)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static inline void ac_alloc(size_t n)
{
    struct ac_slot *s = ac_slot();
    if (s) {
        ac_add(&s->allocs, 1);
        ac_add(&s->bytes, n);
    }
}

void *malloc(size_t n)
{
    ac_alloc(n);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t sz)
{
    ac_alloc(n * sz);
    return __libc_calloc(n, sz);
}

void free(void *p)
{
    if (p) {
        struct ac_slot *s = ac_slot();
        if (s)
            ac_add(&s->frees, 1);
    }
    __libc_free(p);
}

void *realloc(void *p, size_t n)
{
    if (!p) {
        ac_alloc(n);
    } else {
        struct ac_slot *s = ac_slot();
        if (s) {
            if (n) {
                ac_add(&s->reallocs, 1);
                ac_add(&s->bytes, n);
            } else {
                ac_add(&s->frees, 1);
            }
        }
    }
    return __libc_realloc(p, n);
}

void *reallocarray(void *p, size_t n, size_t sz)
{
    size_t t;
    if (__builtin_mul_overflow(n, sz, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, t);
}

void *memalign(size_t align, size_t n)
{
    ac_alloc(n);
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    ac_alloc(n);
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)))
        return EINVAL;
    ac_alloc(n);
    void *p = __libc_memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n)
{
    ac_alloc(n);
    return __libc_valloc(n);
}

void *pvalloc(size_t n)
{
    ac_alloc(n);
    return __libc_pvalloc(n);
}
