/*
 * soth_policy: the CONNECT decision (SPEC "Config file": ignore_hosts, policy.rules,
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

/** Compile cfg's ignore_hosts and rules. NULL with one line in err on failure. */
struct soth_policy *soth_policy_new(const struct soth_config *cfg, char *err, size_t err_len);
void soth_policy_free(struct soth_policy *p);

/**
 * The learning view: answers "has TLS learning pinned host:port to tunnel?". NULL = no
 * learning. Implemented by the TLS module; policy only asks.
 */
struct soth_learning_view {
    bool (*is_pinned)(void *ctx, struct soth_iov host, uint16_t port);
    void *ctx;
};

/** Reason values are enum soth_decision_reason from soth/observe.h, kept as int here. */
struct soth_policy_decision {
    enum soth_action action;
    int reason;           /* SOTH_REASON_* (observe.h numbering) */
    struct soth_iov rule; /* the matching rule's text, or {NULL,0} */
};

/**
 * Decide for host:port. Order: ignore_hosts (tunnel), learning (tunnel), rules (first match),
 * default. host is not NUL-terminated; case-insensitive for names.
 */
struct soth_policy_decision soth_policy_decide(const struct soth_policy *p, struct soth_iov host,
                                               uint16_t port, const struct soth_learning_view *lv);

/**
 * Glob match of a host against a rule glob: '*' matches one or more whole labels
 * ("*.bank.example" matches "a.bank.example" and "a.b.bank.example", not "bank.example");
 * otherwise labels compare case-insensitively. Exposed for tests and the fuzzer.
 */
bool soth_policy_glob_match(struct soth_iov glob, struct soth_iov host);

#endif
