/*
 * A per-thread cache of freed heap blocks by size class, for the libraries that allocate per
 * request on a worker: wolfSSL's record buffers and nghttp2's stream, frame and header objects
 * (docs/performance.md, "Allocations per request"). A block freed on a thread goes onto that
 * thread's free list for its size class (bounded in blocks and bytes) and the next allocation
 * of that class on the thread takes it back, so a worker in steady state calls malloc only
 * when it needs more blocks at once than it ever had. No lock, no atomic: each thread has its
 * own lists; a block may be freed on another thread than the one that allocated it.
 *
 * Sizes up to SOTH_BC_MAX are rounded up to a class: below 1 KiB to what glibc's malloc
 * would hand out anyway (16 k + 8 bytes), above it eight per power of two (at most an eighth
 * more than asked); larger requests go straight to malloc. Frees take the size from
 * malloc_usable_size, so any malloc'd block can be freed here. Built with a sanitizer, every
 * call goes straight to libc (its checks of use after free stay whole).
 */
#ifndef SOTH_BLOCKCACHE_H
#define SOTH_BLOCKCACHE_H

#include <stdbool.h>
#include <stddef.h>

#define SOTH_BC_MAX              65536u       /* largest class */
#define SOTH_BC_KEEP             64u          /* blocks kept per class per thread */
#define SOTH_BC_SMALL            1024u        /* small classes: up to this size */
#define SOTH_BC_KEEP_SMALL_BYTES (256u << 10) /* bytes kept per thread in small classes */
#define SOTH_BC_KEEP_BYTES       (1u << 20)   /* bytes kept per thread in larger classes */

void *soth_bc_malloc(size_t n);
void *soth_bc_calloc(size_t nmemb, size_t size);
void *soth_bc_realloc(void *p, size_t n);
void soth_bc_free(void *p);
/** Give this thread's cached blocks back to libc (idle trimming; also done at thread exit). */
void soth_bc_trim(void);
/** Bytes this thread holds in its cache. */
size_t soth_bc_cached_bytes(void);
/** False in sanitizer builds: every call is libc's. */
bool soth_bc_enabled(void);

#endif
