/*
 * soth_policy: the CONNECT decision (docs/config.md: ignore_hosts, policy.rules,
 * policy.default, tls learning). Decisions are pure functions of (host, port, compiled
 * policy, learning view). One compiled policy per worker (POSIX regexec is not free of
 * internal locking, so workers never share a regex_t); SIGHUP compiles a new one.
 */
#ifndef SOTH_POLICY_H
#define SOTH_POLICY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "soth/base.h"
#include "soth/config.h"

struct soth_policy;

/** Longest host (bytes) that ignore_hosts can be evaluated for; longer hosts match none. */
#define SOTH_POLICY_MAX_HOST 1024

/**
 * Compile cfg's ignore_hosts (regcomp REG_EXTENDED | REG_NOSUB | REG_ICASE) and copy its rules
 * and default. The policy keeps no pointer into cfg: it may outlive it. Returns NULL with one
 * line in err (err_len bytes, may be NULL/0) on failure, e.g. "config: ignore_hosts[1]:
 * invalid regular expression: ...". Start-up / SIGHUP only (allocates).
 */
struct soth_policy *soth_policy_new(const struct soth_config *cfg, char *err, size_t err_len);
/**
 * Drop a reference to a policy (the last one frees it); NULL is fine. Rule iovs and routes
 * from its decisions die with it. A policy belongs to one worker: references are not atomic.
 */
void soth_policy_free(struct soth_policy *p);
/** One more reference (a flow that keeps a decision's route past a reload); returns p. */
struct soth_policy *soth_policy_ref(struct soth_policy *p);

/**
 * The learning view: answers "has TLS learning pinned host:port to tunnel?". NULL = no
 * learning. Implemented by the TLS module; policy only asks. Called with the host as given to
 * soth_policy_decide, on the deciding thread, only when no ignore_hosts entry matched.
 */
struct soth_learning_view {
    bool (*is_pinned)(void *ctx, struct soth_iov host, uint16_t port);
    void *ctx;
};

/** Reason values are enum soth_decision_reason from soth/observe.h, kept as int here. */
struct soth_policy_decision {
    enum soth_action action;
    int reason;           /* SOTH_REASON_* (observe.h numbering) */
    struct soth_iov rule; /* the matching rule's text as written, or {NULL,0}; owned by p */
    /* docs/config.md "identities": the matching rule's `id`, or its index in decimal when it
     * has none ({NULL,0} when no rule matched); owned by p */
    struct soth_iov rule_id;
    int rule_index;  /* index into policy.rules, -1 when no rule matched */
    int budget_slot; /* the rule's budget (soth_policy_budget), -1 when it has none */
    /* how to reach the target (docs/config.md "Routes"), never NULL; owned by p: the matching
     * rule's route, else policy.default_route; for ignore_hosts and TLS learning the route of
     * the rule that would have matched (their action changes, not the way out) */
    const struct soth_route *route;
};

/**
 * Decide for host:port (host as the client named it, IPv6 without brackets; not
 * NUL-terminated). Pure: the same (p, host, port, learning answer) gives the same decision;
 * no allocation, safe to call from one thread per policy (regexec on a regex_t that no other
 * thread uses). Order, first that applies wins:
 *  1. ignore_hosts -> tunnel, reason SOTH_REASON_IGNORE_HOSTS. Each regex is searched (not
 *     anchored: write ^...$ for a whole match, as in mitmproxy) in the text "host:port", with
 *     IPv6 literals in brackets ("[::1]:443"), one trailing dot of the host dropped, case
 *     ignored. Hosts longer than SOTH_POLICY_MAX_HOST match no entry.
 *  2. lv->is_pinned -> tunnel, reason SOTH_REASON_TLS_LEARNING.
 *  3. the first rule whose port is -1 or equal and whose glob matches (soth_policy_glob_match)
 *     -> its action, reason SOTH_REASON_POLICY_RULE, rule = its text.
 *  4. policy.default, reason SOTH_REASON_DEFAULT.
 * d.route is set in every case (step 1 and 2 take it from the rule step 3 would pick).
 */
struct soth_policy_decision soth_policy_decide(const struct soth_policy *p, struct soth_iov host,
                                               uint16_t port, const struct soth_learning_view *lv);

/**
 * soth_policy_decide for a flow of `identity` (soth_policy_identify): step 3 skips rules
 * whose `identities` do not list it. soth_policy_decide is this with SOTH_IDENTITY_ANONYMOUS.
 */
struct soth_policy_decision soth_policy_decide_for(const struct soth_policy *p,
                                                   struct soth_iov host, uint16_t port,
                                                   int identity,
                                                   const struct soth_learning_view *lv);

/* ---- identities (docs/config.md "identities") */

/** Identity numbers: 0 is `anonymous`, then every id of identities.users and
 *  identities.networks, numbered in order of first appearance. */
#define SOTH_IDENTITY_ANONYMOUS 0

/** What soth_policy_identify found. */
enum soth_ident_result {
    SOTH_IDENT_OK = 0,    /* *identity set (a user, a network, or anonymous) */
    SOTH_IDENT_BAD_CREDS, /* Proxy-Authorization present but not valid Basic credentials of
                             a configured user; *identity is the network or anonymous */
    SOTH_IDENT_REQUIRED,  /* identities.require and no identity: answer 407 */
};

/**
 * The identity of a request: Basic credentials in `proxy_authorization` (the header's value,
 * {NULL,0} when absent), checked against every user's password SHA-256 in constant time; else
 * the first network whose CIDR holds `client` (may be NULL); else anonymous. With
 * identities.require, bad credentials or no identity at all give SOTH_IDENT_REQUIRED (bad
 * credentials never fall back to the client's network then). Allocation-free; hashes the
 * password once (SHA-256).
 */
enum soth_ident_result soth_policy_identify(const struct soth_policy *p,
                                            struct soth_iov proxy_authorization,
                                            const struct sockaddr *client, int *identity);
/** The identity's id ("anonymous" for 0); owned by p. */
struct soth_iov soth_policy_identity_name(const struct soth_policy *p, int identity);
/** Number of identities, anonymous included. */
int soth_policy_n_identities(const struct soth_policy *p);

/**
 * Split a Basic Proxy-Authorization value ("Basic <base64 of user:password>", scheme
 * case-insensitive, RFC 7617) into buf[0 .. cap): *user and *pass point into buf. Returns 0, or
 * SOTH_E_MALFORMED (not Basic, bad base64, no ':'), SOTH_E_TOO_LARGE (longer than cap).
 * Exposed for tests and the fuzzer.
 */
int soth_policy_basic_parse(struct soth_iov value, char *buf, size_t cap, struct soth_iov *user,
                            struct soth_iov *pass);
/** Equal 32-byte digests, in time independent of where they differ. */
bool soth_policy_digest_eq(const uint8_t a[32], const uint8_t b[32]);

/** Budgets: one per rule with `budget`, numbered 0.. in rule order. */
int soth_policy_n_budgets(const struct soth_policy *p);
/** The budget of slot (0 <= slot < soth_policy_n_budgets). */
const struct soth_budget_cfg *soth_policy_budget(const struct soth_policy *p, int slot);
/** The rule id text of budget slot (as in decisions; owned by p). */
struct soth_iov soth_policy_budget_rule(const struct soth_policy *p, int slot);

/**
 * Glob match of a host against a rule glob, label by label: a label that is exactly '*'
 * matches one or more whole labels, anywhere in the glob ("*.bank.example" matches
 * "a.bank.example" and "a.b.bank.example", not "bank.example"; "*" matches any host);
 * other labels compare ASCII case-insensitively and literally ('*' inside a label is a
 * plain byte). One trailing dot is ignored on each side; an empty glob or host matches
 * nothing. Linear in (glob labels x host labels); exposed for tests and the fuzzer.
 */
bool soth_policy_glob_match(struct soth_iov glob, struct soth_iov host);

/* ---- budgets (docs/config.md "identities", design and bound in docs/soth.md "Budgets") */

struct soth_budget;

/** Over-budget answers of soth_budget_admit. */
enum soth_budget_limit { SOTH_BUDGET_OK = 0, SOTH_BUDGET_REQUESTS, SOTH_BUDGET_BYTES };
extern const char *const soth_budget_limit_names[3]; /* "", "requests", "bytes" */

/** Sub-windows per window: the window slides in steps of window_s / SOTH_BUDGET_BUCKETS. */
#define SOTH_BUDGET_BUCKETS 8

/**
 * The shared counters for p's budgets: one slot per (identity, budget) and worker, each
 * written by its worker only and read by all (relaxed atomics, no lock). Main thread, at
 * start-up or reload (allocates); NULL when out of memory or when p has no budget.
 */
struct soth_budget *soth_budget_new(const struct soth_policy *p, unsigned n_workers);
void soth_budget_free(struct soth_budget *b);
/** Users of a table (policies holding it, and whoever made it, which holds it from
 *  soth_budget_new): hold and release from any thread; a table whose count is 0 and that no
 *  one can hold again may be freed (core/engine.c). */
void soth_budget_hold(struct soth_budget *b);
void soth_budget_release(struct soth_budget *b);
unsigned soth_budget_users(const struct soth_budget *b);
/** The budget table p's flows count in: p holds b (released when p's last reference goes;
 *  b may be NULL). One worker's policy, set before the policy is used. */
void soth_policy_set_budget(struct soth_policy *p, struct soth_budget *b);
struct soth_budget *soth_policy_budget_table(const struct soth_policy *p);
/** Does b count the same (identity, budget) pairs with the same limits as p would? A reload
 *  that keeps them keeps b, and with it the counts. */
bool soth_budget_fits(const struct soth_budget *b, const struct soth_policy *p);

/**
 * May a request (or tunnel) of `identity` under budget `slot` start at now_ms? Sums every
 * worker's counts within the window: at or above `requests` (when set) refuses with
 * SOTH_BUDGET_REQUESTS, at or above `bytes` with SOTH_BUDGET_BYTES, and *retry_after_s (may
 * be NULL) tells when the oldest counted sub-window leaves the window (>= 1). Otherwise
 * counts the request on `worker` when count_request and returns SOTH_BUDGET_OK. Worker thread
 * of `worker`; allocation-free; O(workers x SOTH_BUDGET_BUCKETS).
 */
enum soth_budget_limit soth_budget_admit(struct soth_budget *b, unsigned worker, int identity,
                                         int slot, uint64_t now_ms, bool count_request,
                                         uint32_t *retry_after_s);
/** Count n relayed bytes of a flow admitted under (identity, slot) on `worker`. */
void soth_budget_add_bytes(struct soth_budget *b, unsigned worker, int identity, int slot,
                           uint64_t now_ms, uint64_t n);
/** Number of budgets and rejections so far of slot (summed over workers; any thread). */
int soth_budget_n_slots(const struct soth_budget *b);
uint64_t soth_budget_rejections(const struct soth_budget *b, int slot);
/** window_s of slot. */
uint32_t soth_budget_window_s(const struct soth_budget *b, int slot);
/** The rule id of slot (a copy owned by b). */
const char *soth_budget_rule(const struct soth_budget *b, int slot);

#endif
