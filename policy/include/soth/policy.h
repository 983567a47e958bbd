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
 * Glob match of a host against a rule glob, label by label: a label that is exactly '*'
 * matches one or more whole labels, anywhere in the glob ("*.bank.example" matches
 * "a.bank.example" and "a.b.bank.example", not "bank.example"; "*" matches any host);
 * other labels compare ASCII case-insensitively and literally ('*' inside a label is a
 * plain byte). One trailing dot is ignored on each side; an empty glob or host matches
 * nothing. Linear in (glob labels x host labels); exposed for tests and the fuzzer.
 */
bool soth_policy_glob_match(struct soth_iov glob, struct soth_iov host);

#endif
