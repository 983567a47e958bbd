/*
 * soth_tls: TLS interception on wolfSSL (docs/tls.md). wolfSSL types never appear here.
 *
 * Pieces, in the order the engine uses them (docs/tls.md has the whole sequence):
 *  - soth_tls_global_init(): once per process, before any worker starts (wolfSSL, the shared
 *    session-ticket key).
 *  - soth_tls_self_check(): which crypto fast paths are in use (start-up log line).
 *  - soth_tls_ca_load_or_create(): the CA (operator-provided or generated, rotated).
 *  - soth_tls_peek_client_hello(): SNI / ALPN from the client's first bytes, before any TLS
 *    object exists.
 *  - struct soth_tls_ctx: one per worker: server and client wolfSSL contexts, the leaf minter
 *    (one reused P-256 leaf key) and the LRU leaf cache. Never shared between threads.
 *  - struct soth_tls_conn: one TLS connection over memory I/O: the engine feeds received
 *    ciphertext, drives the handshake, reads/writes plaintext and sends what soth_tls_conn_out()
 *    exposes. It never touches a socket.
 *  - soth_tls_conn_failure(): the failure taxonomy for a failed handshake (docs/tls.md).
 *  - struct soth_tls_learning: per-host failure counts and pinning (bypass) state, published
 *    to workers as immutable snapshots.
 *
 * Threading: everything taking a struct soth_tls_ctx or a conn is single-threaded (the worker
 * owning the ctx). A CA is immutable after load and may be read by every worker.
 */
#ifndef SOTH_TLS_H
#define SOTH_TLS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/* ---- errors beyond enum soth_err (soth_strerror prints them as unknown codes) */
enum {
    SOTH_TLS_E_NOT_TLS = -1100, /* the bytes are not a TLS handshake record (plain HTTP, SSLv2) */
};

/* ---- process start-up */

/**
 * Once per process, before any worker starts: initialises wolfSSL and draws the
 * session-ticket key shared by every server context of every worker (so a client resumes
 * wherever it lands). Returns 0 or SOTH_E_TLS. Idempotent.
 */
int soth_tls_global_init(void);
/** Releases what soth_tls_global_init() set up, after every ctx is freed. */
void soth_tls_global_cleanup(void);

/** Which fast paths the linked wolfSSL has and this CPU can run. */
struct soth_tls_caps {
    bool aesni_built;  /* WOLFSSL_AESNI */
    bool aesni_cpu;    /* the CPU has AES-NI (wolfSSL picks it at run time) */
    bool sp_asm_built; /* P-256 through the x86-64 SP assembly (WOLFSSL_SP_X86_64_ASM) */
    const char *version;
};

/**
 * Fill caps and a one-line description for the start-up log, e.g.
 * "wolfSSL 5.5.4: AES-GCM AES-NI, P-256 SP x86-64 assembly". line may be NULL.
 */
void soth_tls_self_check(struct soth_tls_caps *caps, char *line, size_t line_len);

/* ---- ClientHello peek */

#define SOTH_TLS_MAX_ALPN     16    /* protocols kept from a ClientHello's ALPN list */
#define SOTH_TLS_MAX_HELLO    65536 /* larger ClientHello messages: SOTH_E_TOO_LARGE */
#define SOTH_TLS_MAX_NAME_LEN 253   /* longest SNI / leaf name accepted */

/** What the engine needs from a ClientHello. iovs are borrowed (see scratch). */
struct soth_tls_client_hello {
    /*
     * In (optional): room to reassemble a ClientHello split over several records. Without
     * it (NULL) such a hello gives SOTH_E_TOO_LARGE; with too little room as well. Every
     * iov points into buf when the hello sits in one record (the usual case), else into
     * scratch.
     */
    char *scratch;
    size_t scratch_cap;

    /* Out */
    uint16_t record_version; /* version field of the first record header (0x0301 typically) */
    uint16_t legacy_version; /* ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3) */
    uint16_t max_version;    /* highest non-GREASE supported_versions entry, else legacy */
    bool has_supported_versions;
    bool has_sni;
    struct soth_iov sni; /* host_name (validated: letters, digits, '-', '.', '_'; no IP) */
    bool has_alpn;
    size_t n_alpn;                           /* protocols kept (<= SOTH_TLS_MAX_ALPN) */
    bool alpn_truncated;                     /* the list had more than SOTH_TLS_MAX_ALPN */
    struct soth_iov alpn[SOTH_TLS_MAX_ALPN]; /* in the client's order */
    size_t hello_len;        /* the ClientHello handshake message length (header included) */
    struct soth_iov ciphers; /* the cipher_suites vector's body (2 bytes per suite) */
    struct soth_iov exts;    /* the extensions block's body ({NULL,0} without extensions) */
};

/**
 * Parse a ClientHello from the start of a TLS byte stream (buf, len): the bytes received so
 * far. Stateless: call again with the longer prefix when more bytes arrive.
 *
 * Returns the number of bytes of buf taken by the records that carry the ClientHello (the
 * engine replays at least these into the server conn), or
 *  - SOTH_E_INCOMPLETE: a valid prefix, the hello is not complete yet;
 *  - SOTH_TLS_E_NOT_TLS: the first byte/record header is not a TLS handshake record;
 *  - SOTH_E_MALFORMED: a TLS record stream whose ClientHello breaks RFC 8446/6066/7301;
 *  - SOTH_E_TOO_LARGE: hello over SOTH_TLS_MAX_HELLO, or spanning records without scratch.
 * info is fully written only on success.
 */
ssize_t soth_tls_peek_client_hello(const void *buf, size_t len, struct soth_tls_client_hello *info);

/**
 * Parse a bare ClientHello handshake message (msg, len): the 4-byte handshake header and the
 * body, without any TLS record header, as QUIC carries it in CRYPTO frames (RFC 9001 4.1.3;
 * soth/quic.h). Same checks and fields as soth_tls_peek_client_hello(); record_version is 0,
 * scratch is not used, every iov points into msg.
 *
 * Returns the message length (header included; bytes after it are not looked at), or
 *  - SOTH_E_INCOMPLETE: msg is a valid prefix shorter than the message;
 *  - SOTH_E_MALFORMED: another handshake type, or a ClientHello breaking RFC 8446/6066/7301;
 *  - SOTH_E_TOO_LARGE: a message over SOTH_TLS_MAX_HELLO.
 * info is fully written only on success.
 */
ssize_t soth_tls_parse_client_hello_msg(const void *msg, size_t len,
                                        struct soth_tls_client_hello *info);

/* ---- key log (docs/tls.md, "Key log") */

/**
 * Start writing NSS key log lines (CLIENT_RANDOM for TLS 1.2; the handshake and traffic
 * secrets for TLS 1.3) for both legs of every connection created from now on, to path
 * (created 0600, appended to, made 0600 if it was wider). Process-wide: call before workers
 * start. Returns 0, or negative with a one-line reason in err.
 */
int soth_tls_keylog_open(const char *path, char *err, size_t err_len);
void soth_tls_keylog_close(void);
bool soth_tls_keylog_enabled(void);

/* ---- fingerprints (docs/tls.md, "Fingerprints") */

#define SOTH_TLS_JA4_LEN  36 /* "t13d1516h2_8daaf6152771_e5627efa2ab1" */
#define SOTH_TLS_JA4S_LEN 25 /* "t120400_c030_4e8089b08790" */

/**
 * The JA4 fingerprint of a ClientHello parsed by soth_tls_peek_client_hello() or
 * soth_tls_parse_client_hello_msg() (the bytes its iovs point into still valid); quic picks
 * the "q" prefix. Writes SOTH_TLS_JA4_LEN characters and a NUL into out (cap bytes). Returns
 * SOTH_TLS_JA4_LEN, or SOTH_E_TOO_LARGE (cap, or more than 512 suites or extensions),
 * SOTH_E_MALFORMED.
 */
int soth_tls_ja4(const struct soth_tls_client_hello *h, bool quic, char *out, size_t cap);
/**
 * The JA4S fingerprint of a ServerHello handshake message (msg: the 4-byte header and the
 * body). Returns SOTH_TLS_JA4S_LEN (and out as soth_tls_ja4), or SOTH_E_INCOMPLETE,
 * SOTH_E_MALFORMED, SOTH_E_TOO_LARGE.
 */
int soth_tls_ja4s_msg(const void *msg, size_t len, bool quic, char *out, size_t cap);

/* ---- CA */

/** Where the CA comes from (the tls.* config keys). */
struct soth_tls_ca_params {
    const char *ca_dir;  /* a generated CA lives here (created 0700); required without ca_cert */
    const char *ca_cert; /* operator PEM cert + key: both or neither; never rotated */
    const char *ca_key;
    uint32_t rotate_after_days; /* 0 = never; else a generated CA older than this is replaced */
    int64_t now_s;              /* 0 = the current time (tests pass a fixed clock) */
};

/** How soth_tls_ca_load_or_create() got the CA. */
enum soth_tls_ca_origin {
    SOTH_TLS_CA_LOADED = 0, /* existing files reused */
    SOTH_TLS_CA_CREATED,    /* first run: generated into ca_dir */
    SOTH_TLS_CA_ROTATED,    /* generated, the old cert kept as soth-mitm-ca.<date>.pem */
    SOTH_TLS_CA_ORIGIN_COUNT
};

/** File names inside ca_dir. */
#define SOTH_TLS_CA_CERT_FILE "soth-mitm-ca.pem"
#define SOTH_TLS_CA_KEY_FILE  "soth-mitm-ca.key"

/** An immutable CA: cert (DER), signing key, issuer metadata read from the cert. */
struct soth_tls_ca;

/**
 * Load the CA (ca_cert/ca_key, or the files in ca_dir), or generate it on first run:
 * ECDSA P-256, self-signed, CA:TRUE, keyCertSign|cRLSign, 10 years; the key file is written
 * 0600 and the directory 0700. Operator keys may be ECDSA or RSA. Concurrent starts are
 * serialised by an flock on ca_dir. Start-up only (file I/O).
 *
 * Returns 0 and *out (caller frees with soth_tls_ca_free), *origin if non-NULL; or a negative
 * code with a one-line reason in err ("tls.ca_key: cannot read /x: No such file or directory").
 */
int soth_tls_ca_load_or_create(const struct soth_tls_ca_params *p, struct soth_tls_ca **out,
                               enum soth_tls_ca_origin *origin, char *err, size_t err_len);
void soth_tls_ca_free(struct soth_tls_ca *ca);
/** Path of the CA certificate in use (PEM; what users import into their trust store). */
const char *soth_tls_ca_cert_path(const struct soth_tls_ca *ca);
/** The CA certificate, DER (borrowed, lives as long as ca). */
struct soth_iov soth_tls_ca_cert_der(const struct soth_tls_ca *ca);
/** notBefore of the CA certificate, seconds since the epoch. */
int64_t soth_tls_ca_not_before(const struct soth_tls_ca *ca);

/* ---- per-worker context: wolfSSL contexts, leaf minting, leaf cache */

struct soth_tls_ctx_params {
    const struct soth_tls_ca *ca; /* borrowed: must outlive the ctx */
    uint32_t leaf_validity_days;  /* >= 1 */
    uint32_t leaf_cache_size;     /* entries; 0 disables the cache (mint every time) */
    bool upstream_verify;         /* false = tls.upstream_verify opt-out: no verification */
    const char *upstream_ca_file; /* extra trusted CAs (PEM), NULL = none */
    const char *system_ca_file;   /* NULL = /etc/ssl/certs/ca-certificates.crt */
    bool http2_enabled;           /* false: "h2" is dropped from the ALPN offered upstream */
};

/** One per worker; never shared. */
struct soth_tls_ctx;

/**
 * Build a worker's TLS context: server and client wolfSSL contexts (TLS >= 1.2, ECDHE
 * AES-GCM/ChaCha20 suites, X25519 + P-256, the process ticket key), a pre-generated P-256
 * leaf key reused for every leaf this worker mints, and the leaf cache. Loads trust stores
 * from files: start-up only. Requires soth_tls_global_init(). Returns 0 or negative with err.
 */
int soth_tls_ctx_new(const struct soth_tls_ctx_params *p, struct soth_tls_ctx **out, char *err,
                     size_t err_len);
void soth_tls_ctx_free(struct soth_tls_ctx *t);

/** A leaf certificate, borrowed from the ctx. */
struct soth_tls_leaf {
    struct soth_iov der; /* the certificate, DER */
    uint64_t key;        /* XXH3_64bits of the normalised name */
};

/**
 * Mint a leaf for name without the cache: ECDSA P-256 (the worker's leaf key), SAN dNSName
 * (wildcards allowed) or iPAddress for an IPv4/IPv6 literal ("[::1]" accepted), CN = name when
 * it fits (64 bytes), random positive 128-bit serial, notBefore now - 1 h, notAfter
 * notBefore + leaf_validity_days, AKI = the CA's key id, EKU serverAuth, signed by the CA.
 * Writes DER into der (cap bytes, 2048 is always enough for a P-256 CA); returns its length
 * or SOTH_E_MALFORMED (invalid name), SOTH_E_TOO_LARGE (cap), SOTH_E_TLS.
 */
ssize_t soth_tls_leaf_mint(struct soth_tls_ctx *t, struct soth_iov name, uint8_t *der, size_t cap);

/**
 * The leaf for name from the worker's LRU cache, minting (and caching) it on a miss. The name
 * is normalised (ASCII lower case, IPv6 brackets dropped) and keyed by XXH3_64bits.
 * *out stays valid until the next soth_tls_leaf_get / soth_tls_leaf_cache_flush on this ctx.
 * Returns 0 (and whether it was a hit via the counters) or as soth_tls_leaf_mint.
 */
int soth_tls_leaf_get(struct soth_tls_ctx *t, struct soth_iov name, struct soth_tls_leaf *out);

struct soth_tls_leaf_cache_stats {
    uint64_t hits, misses; /* monotonic since ctx creation (metrics: docs/metrics.md) */
    uint64_t evictions;
    uint32_t entries, capacity;
};
void soth_tls_leaf_cache_stats(const struct soth_tls_ctx *t, struct soth_tls_leaf_cache_stats *s);
/**
 * Drop every cached leaf (SIGUSR1 force-rotate hook: each worker calls it at its next safe
 * point). Counters are kept.
 */
void soth_tls_leaf_cache_flush(struct soth_tls_ctx *t);

/**
 * Free the ctx's kept (pooled, unused) connection structs, output chunks and input-remainder
 * buffers: a quiet worker giving memory back (docs/performance.md, "Memory after bursts").
 * Live connections are not touched.
 */
void soth_tls_ctx_trim(struct soth_tls_ctx *t);

/* ---- one TLS connection over memory I/O */

/*
 * A connection is on one leg (enum soth_leg, soth/base.h): on SOTH_LEG_CLIENT it faces the
 * client and we are the TLS server; on SOTH_LEG_UPSTREAM it faces the origin and we are the
 * TLS client.
 */

struct soth_tls_conn;

/**
 * Server half for a client connection: presents the leaf for name (from the worker's cache,
 * minted on a miss) and selects alpn when the client offered it (mirroring the upstream's
 * choice; {NULL,0} = negotiate no ALPN). Nothing is sent before input: feed the ClientHello
 * bytes (the peeked ones first), then drive soth_tls_conn_handshake(). Returns 0 or negative.
 */
int soth_tls_conn_new_server(struct soth_tls_ctx *t, struct soth_iov name, struct soth_iov alpn,
                             struct soth_tls_conn **out);

/**
 * Client half towards the origin. host: what was CONNECTed to (or the client's SNI): a DNS
 * name goes into SNI and is verified against the certificate; an IP literal sends no SNI and is
 * verified against iPAddress SANs. alpn: the client's list (may be empty), filtered here ("h2"
 * dropped when http2 is disabled). Verification per ctx params. The ClientHello is queued
 * for soth_tls_conn_out() after the first soth_tls_conn_handshake().
 */
int soth_tls_conn_new_client(struct soth_tls_ctx *t, struct soth_iov host,
                             const struct soth_iov *alpn, size_t n_alpn,
                             struct soth_tls_conn **out);

/** Free a conn (no close_notify: call soth_tls_conn_shutdown first for a clean close). */
void soth_tls_conn_free(struct soth_tls_conn *c);

/**
 * Hand received ciphertext to the conn. The bytes are borrowed: they are consumed directly
 * from data by the following handshake/read calls, and soth_tls_conn_feed_done() copies what
 * is left into the conn before the caller reuses data. A feed while a borrow is active ends
 * that borrow first. Returns 0 or SOTH_E_NOMEM / SOTH_E_TOO_LARGE (more than 1 MiB unread).
 */
int soth_tls_conn_feed(struct soth_tls_conn *c, const void *data, size_t len);
/** End the borrow of the last feed: copy its unconsumed remainder (usually nothing). */
int soth_tls_conn_feed_done(struct soth_tls_conn *c);
/** Ciphertext fed but not consumed yet (borrowed + copied). */
size_t soth_tls_conn_in_pending(const struct soth_tls_conn *c);

/**
 * Advance the handshake with the input fed so far. Returns 0 once complete (then also call
 * soth_tls_conn_read: application data may follow the handshake in the same input),
 * SOTH_E_INCOMPLETE when more input is needed, or a negative code on failure (see
 * soth_tls_conn_failure). Check soth_tls_conn_out_pending() after every call.
 */
int soth_tls_conn_handshake(struct soth_tls_conn *c);
bool soth_tls_conn_is_established(const struct soth_tls_conn *c);

/**
 * Decrypt application data into buf (cap bytes). Returns bytes (> 0), SOTH_E_INCOMPLETE when
 * none is available from the input fed, 0 on the peer's close_notify, negative on error.
 * Post-handshake messages (tickets, key updates) are processed here and may queue output.
 * Reads go on after soth_tls_conn_shutdown (our close_notify): the peer's half stays open.
 */
ssize_t soth_tls_conn_read(struct soth_tls_conn *c, void *buf, size_t cap);

/**
 * soth_tls_conn_read without the copy where the TLS library allows it (docs/tls.md, "Memory
 * I/O"): sets *p to the bytes returned, in the conn's record buffer where they were decrypted,
 * or in buf (cap bytes) with a library that cannot lend them. Returns like soth_tls_conn_read.
 * The bytes stay valid until the next read, feed, feed_done, handshake or shutdown on c (writes
 * on c leave them alone) or c is freed.
 */
ssize_t soth_tls_conn_read_view(struct soth_tls_conn *c, const char **p, void *buf, size_t cap);

/**
 * Encrypt len bytes of plaintext. Always takes all of it (ciphertext is queued; the caller
 * applies backpressure by soth_tls_conn_out_pending()). Returns len, or SOTH_E_STATE before
 * the handshake completed / after shutdown, or negative on error.
 */
ssize_t soth_tls_conn_write(struct soth_tls_conn *c, const void *data, size_t len);

/**
 * The next run of queued ciphertext to send. Returns its length (0 = nothing queued) and sets
 * *iov. The bytes stay valid and in place until soth_tls_conn_out_consume() passes them, even
 * while later calls queue more (an in-flight send may keep pointing at them).
 */
size_t soth_tls_conn_out(const struct soth_tls_conn *c, struct soth_iov *iov);
/** Up to max runs at once (for sendmsg): returns how many iovs were filled. */
size_t soth_tls_conn_out_iovs(const struct soth_tls_conn *c, struct soth_iov *iov, size_t max);
/** n bytes of the queue were sent. */
void soth_tls_conn_out_consume(struct soth_tls_conn *c, size_t n);
/** Ciphertext queued and not consumed (backpressure). */
size_t soth_tls_conn_out_pending(const struct soth_tls_conn *c);

/** Takes n bytes of ciphertext (copies them: p is wolfSSL's record buffer). 0, or negative to
 *  fail the call that wrote them (write, handshake, read, shutdown). */
typedef int (*soth_tls_sink_fn)(void *ctx, const void *p, size_t n);
/**
 * From now on ciphertext goes to fn(ctx, ...) as wolfSSL produces it, instead of the conn's
 * queue for soth_tls_conn_out(): the caller appends it straight to its own send queue, one
 * copy fewer (docs/tls.md, "Memory I/O"). Only with nothing queued, so order holds: false
 * (and nothing changes) while soth_tls_conn_out_pending() is not 0. fn NULL queues again. The
 * caller clears it (NULL) before ctx goes away while the conn lives on.
 */
bool soth_tls_conn_set_sink(struct soth_tls_conn *c, soth_tls_sink_fn fn, void *ctx);
/** Room for n bytes at the end of the sink's queue, or NULL (then the bytes come to the sink
 *  fn instead). The next call on ctx is the commit. */
typedef void *(*soth_tls_reserve_fn)(void *ctx, size_t n);
/** The first n bytes of what the reserve gave are ciphertext to send (0: none). */
typedef void (*soth_tls_commit_fn)(void *ctx, size_t n);
/**
 * With a sink set, wolfSSL builds each application data record straight into room the sink's
 * queue lends (reserve, then commit) instead of its own output buffer: the record's one copy
 * of the plaintext is the one encryption makes in place, and the sink fn's copy goes
 * (docs/tls.md, "Memory I/O"). Handshake records, alerts and key updates still come to fn.
 * A no-op with a wolfSSL without the record-reserve patch. Cleared with the sink.
 */
void soth_tls_conn_set_sink_room(struct soth_tls_conn *c, soth_tls_reserve_fn reserve,
                                 soth_tls_commit_fn commit);
/** The sink's ctx, NULL when none is set. */
void *soth_tls_conn_sink_ctx(const struct soth_tls_conn *c);

/** Queue a close_notify. Returns 0 or negative. */
int soth_tls_conn_shutdown(struct soth_tls_conn *c);

/** Negotiated version ("TLSv1.3"), cipher ("TLS_AES_128_GCM_SHA256"), ALPN ({NULL,0}). */
struct soth_iov soth_tls_conn_version(const struct soth_tls_conn *c);
struct soth_iov soth_tls_conn_cipher(const struct soth_tls_conn *c);
struct soth_iov soth_tls_conn_alpn(const struct soth_tls_conn *c);
/** Upstream conns: the origin's JA4S, known once its ServerHello arrived ({NULL,0} before,
 * on client conns, or for a ServerHello over 4 KiB). Lives as long as c. */
struct soth_iov soth_tls_conn_ja4s(const struct soth_tls_conn *c);
/** Whether the session was resumed (ticket). */
bool soth_tls_conn_resumed(const struct soth_tls_conn *c);
/** The leg the connection is on. */
enum soth_leg soth_tls_conn_side(const struct soth_tls_conn *c);

/* ---- failure taxonomy */

/** tls_failure_reason (docs/events.md), in the order of observe.h's enum soth_tls_failure. */
enum soth_tls_fail {
    SOTH_TLS_FAIL_UNKNOWN_CA = 0,
    SOTH_TLS_FAIL_CERT_VALIDATION,
    SOTH_TLS_FAIL_HANDSHAKE,
    SOTH_TLS_FAIL_TIMEOUT,
    SOTH_TLS_FAIL_EOF,
    SOTH_TLS_FAIL_RESET,
    SOTH_TLS_FAIL_OTHER,
    SOTH_TLS_FAIL_COUNT
};
extern const char *const soth_tls_fail_names[SOTH_TLS_FAIL_COUNT];

/**
 * Classify why the handshake (or read) of c failed, from the wolfSSL error, the peer's alert
 * (alert history) and what we had sent. detail receives a NUL-terminated raw reason
 * ("alert 48 unknown_ca received", "wolfSSL -188 ASN_NO_SIGNER_E ..."); may be NULL.
 * Returns 0, or SOTH_E_STATE when c has not failed.
 */
int soth_tls_conn_failure(const struct soth_tls_conn *c, enum soth_tls_fail *reason, char *detail,
                          size_t detail_len);

/**
 * Classify mitmproxy's text for a failed handshake on side (its conn.error, as the bridge's
 * tls_failed_client / tls_failed_server lines carry it) into the native classes: the table is
 * in tls/failure_mitm.c and docs/bridge.md. Pure; any bytes; NULL text is "other".
 */
enum soth_tls_fail soth_tls_classify_mitmproxy(enum soth_leg side, const char *text, size_t len);

/** What the transport saw while the handshake was in progress. */
enum soth_tls_transport {
    SOTH_TLS_TRANSPORT_EOF = 0, /* peer closed (recv 0) */
    SOTH_TLS_TRANSPORT_RESET,   /* ECONNRESET / EPIPE */
    SOTH_TLS_TRANSPORT_TIMEOUT, /* timeouts.tls_handshake_ms expired */
};

/**
 * Classify a transport event during the handshake of c. EOF or reset from a client right
 * after our certificate flight is a rejection of our CA (TLS 1.3 clients often close without
 * an alert): unknown_ca; an alert already received wins. Otherwise eof / reset / timeout.
 * detail as soth_tls_conn_failure. Returns the class.
 */
enum soth_tls_fail soth_tls_conn_classify_transport(const struct soth_tls_conn *c,
                                                    enum soth_tls_transport kind, char *detail,
                                                    size_t detail_len);

/* ---- learning (pinning bypass) */

/** tls_ops_provider, in the order of observe.h's enum soth_tls_provider. */
enum soth_tls_signal_provider {
    SOTH_TLS_PROVIDER_NATIVE = 0,
    SOTH_TLS_PROVIDER_MITMPROXY,
    SOTH_TLS_PROVIDER_HUDSUCKER,
    SOTH_TLS_PROVIDER_COUNT
};

struct soth_tls_learning_params {
    bool enabled;               /* tls.learning.enabled */
    uint32_t failure_threshold; /* >= 1 */
    uint32_t window_s;          /* >= 1 */
    uint32_t max_hosts;         /* bound on tracked hosts (0 = 65536); oldest dropped */
};

/**
 * The writer's state: owned by one thread (the telemetry thread, which sees every
 * tls_handshake_failed event). Not thread-safe; workers read published snapshots instead.
 */
struct soth_tls_learning;

/** What one signal did. */
struct soth_tls_learning_result {
    bool counted;                  /* the signal changed counters (authoritative provider) */
    bool ignored;                  /* non-authoritative provider: tls_learning_audit "ignored" */
    bool applied;                  /* this signal pinned the host: tls_learning_audit "applied" */
    uint32_t host_failure_count;   /* failures of this host within the window */
    uint32_t global_failure_count; /* failures of all hosts within the window */
};

/** Only native and mitmproxy signals may change learning state (docs/tls.md, "The rule"). */
bool soth_tls_learning_provider_is_authoritative(enum soth_tls_signal_provider provider);

int soth_tls_learning_new(const struct soth_tls_learning_params *p, struct soth_tls_learning **out);
/** Frees the writer state; snapshots live on until their last reference goes. */
void soth_tls_learning_free(struct soth_tls_learning *l);

/**
 * Record a handshake failure for host:port at now_ns (monotonic). Only authoritative
 * providers (native, mitmproxy) change state; others set result->ignored and change nothing.
 * Every failure counts towards host/global counts; client-side unknown_ca and
 * cert_validation count towards pinning: reaching failure_threshold within window_s pins the
 * host for window_s (result->applied once). Returns 0 or SOTH_E_NOMEM.
 */
int soth_tls_learning_record(struct soth_tls_learning *l, struct soth_iov host, uint16_t port,
                             enum soth_leg side, enum soth_tls_fail reason,
                             enum soth_tls_signal_provider provider, uint64_t now_ns,
                             struct soth_tls_learning_result *result);

/** Is host:port pinned at now_ns (writer-side view)? */
bool soth_tls_learning_is_pinned_at(const struct soth_tls_learning *l, struct soth_iov host,
                                    uint16_t port, uint64_t now_ns);

/**
 * An immutable snapshot of the pinned hosts, reference counted. Workers read it without
 * locks; see soth_tls_learning_slot for how it reaches them.
 */
struct soth_tls_learning_snapshot;

/** Build a snapshot of what is pinned at now_ns (one reference, for the caller). */
struct soth_tls_learning_snapshot *soth_tls_learning_snapshot_new(struct soth_tls_learning *l,
                                                                  uint64_t now_ns);
struct soth_tls_learning_snapshot *
soth_tls_learning_snapshot_ref(struct soth_tls_learning_snapshot *s);
/** Drop one reference (any thread; NULL is a no-op); the last one frees. */
void soth_tls_learning_snapshot_unref(struct soth_tls_learning_snapshot *s);

/**
 * Matches struct soth_learning_view.is_pinned (policy.h): ctx is a snapshot (NULL = nothing
 * pinned). host compared case-insensitively; a pin expires by the monotonic clock even when
 * no newer snapshot arrived.
 */
bool soth_tls_learning_is_pinned(void *ctx, struct soth_iov host, uint16_t port);

/** One pin as a snapshot holds it (for tls_learning_audit). */
struct soth_tls_learning_pin {
    uint64_t until_ns;                      /* monotonic expiry */
    uint32_t failures;                      /* pin-counting failures in the window at pin time */
    enum soth_tls_signal_provider provider; /* the signal that applied the pin */
};

/**
 * Is host:port pinned in snapshot s at now_ns (monotonic)? When it is and out is not NULL,
 * fills out. Lock-free and allocation-free (worker side). s NULL = nothing pinned.
 */
bool soth_tls_learning_lookup(const struct soth_tls_learning_snapshot *s, struct soth_iov host,
                              uint16_t port, uint64_t now_ns, struct soth_tls_learning_pin *out);
/** Pins held by s (expired ones included until the next snapshot); 0 for NULL. */
uint32_t soth_tls_learning_snapshot_pins(const struct soth_tls_learning_snapshot *s);

/**
 * A one-entry lock-free mailbox per worker (as soth_config_slot): the writer publishes a new
 * snapshot reference into every worker's slot; the worker takes it at a safe point, keeps it
 * as its current view and unrefs the previous one. Whoever moves a pointer out of the slot
 * owns its reference.
 */
struct soth_tls_learning_slot {
    _Atomic(struct soth_tls_learning_snapshot *) next;
};
void soth_tls_learning_slot_init(struct soth_tls_learning_slot *slot);
/** Writer: takes ownership of s (one reference); a snapshot not yet taken is released. */
void soth_tls_learning_slot_publish(struct soth_tls_learning_slot *slot,
                                    struct soth_tls_learning_snapshot *s);
/** Worker: the newest unpublished snapshot (caller owns its reference) or NULL. */
struct soth_tls_learning_snapshot *soth_tls_learning_slot_take(struct soth_tls_learning_slot *slot);
/** Release whatever the slot still holds (shutdown). */
void soth_tls_learning_slot_dispose(struct soth_tls_learning_slot *slot);

#endif
