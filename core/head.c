/* The proxy request head of a regular-mode flow (core/head.h). */
#include <stdio.h>
#include <string.h>

#include "soth/proto/connect.h"
#include "soth/proto/h1.h"
#include "soth/proto/headers.h"

#include "answer.h"
#include "app.h"
#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "head.h"
#include "intercept.h"
#include "iobuf.h"
#include "leg.h"
#include "relay.h"
#include "upstream.h"
#include "worker.h"

/* The origin-form head toward the upstream: the longest proxy head accepted (docs/config.md,
 * limits) plus the Host line the serializer may add. */
#define SOTH_HEAD_OUT_MAX (65536 + 512 + 2048) /* + an upstream proxy's target and credentials */

/* The Proxy-Authorization value for the flow's upstream proxy (docs/config.md "Routes"). */
static struct soth_iov route_auth(const struct flow *f)
{
    if (f->route == NULL || f->route->proxy_auth == NULL)
        return SOTH_IOV_NULL;
    return soth_iov(f->route->proxy_auth, f->route->proxy_auth_len);
}

/**
 * The identity of a regular-mode flow (docs/config.md "identities"): Basic credentials of
 * its proxy head, else the client's network, else anonymous. identities.require without one
 * answers 407 (docs/answers.md); the credentials are never logged nor put in an event.
 */
static bool flow_head_identity(struct worker *w, struct flow *f, const struct soth_proxy_head *h)
{
    struct soth_iov pa = soth_header_get(h->headers, h->n_headers, "proxy-authorization");
    int id = SOTH_IDENTITY_ANONYMOUS;
    enum soth_ident_result r =
        soth_policy_identify(w->policy, pa, f->peer_len ? (struct sockaddr *)&f->peer : NULL, &id);
    if (r == SOTH_IDENT_REQUIRED) {
        static const char body[] = "soth-mitm: proxy authentication required\n";
        flow_answer_hdr(w, f, 407, "Proxy Authentication Required",
                        "Proxy-Authenticate: Basic realm=\"soth-mitm\"\r\n", body, sizeof(body) - 1,
                        SOTH_CLOSE_BLOCKED);
        return false;
    }
    flow_set_identity(w, f, id);
    return true;
}

/**
 * A complete head sits in buf[0..head_len); extra bytes after it (already from the client,
 * for the upstream) are handed over by the caller.
 */
static bool flow_on_head(struct worker *w, struct flow *f, const struct soth_proxy_head *h)
{
    soth_ev_flow_set_server(&f->ev, h->host, h->port);
    soth_ev_connect_received(&f->ev, h->method, h->target);
    f->upstream_port = h->port;
    f->is_connect = h->is_connect;
    if (!h->is_connect)
        soth_ev_flow_set_protocol(&f->ev, SOTH_PROTO_HTTP1);
    if (!flow_head_identity(w, f, h))
        return false;
    struct soth_iov rule;
    enum soth_action a = flow_decide(w, f, &rule);
    if (a == SOTH_ACTION_BLOCK) {
        flow_block(w, f, rule);
        return false;
    }
    if (!h->is_connect && a == SOTH_ACTION_INTERCEPT) {
        /* Absolute-form plain HTTP, parsed: the HTTP layer takes the whole head (the caller
         * feeds it) and sends the upstream origin-form. */
        struct app_env env = {
            .cfg = w->cfg,
            .ev = &f->ev,
            .m = w->m,
            .origin_form = true,
            .upstream_proxy = f->route != NULL,
            .proxy_auth = route_auth(f),
            .ctx = f,
            .send = leg_send,
            .budget = f->budget_slot >= 0 ? leg_budget : NULL,
            .budget_bytes = f->budget_slot >= 0 ? leg_budget_bytes : NULL,
        };
        f->app = app_new(APP_H1, &env);
        if (f->app == NULL) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
    } else if (!h->is_connect) {
        /*
         * Absolute-form plain HTTP, tunnelled: the upstream gets origin-form with Host from
         * the target (RFC 9112 3.2.2, the same serializer as the intercepted path) and without
         * the hop-by-hop Proxy-* fields; later requests on the connection are relayed as sent.
         */
        static _Thread_local char out[SOTH_HEAD_OUT_MAX];
        struct soth_h1_origin_req req = {
            .method = h->method,
            .path = h->path,
            .version = h->version,
            .headers = h->headers,
            .n_headers = h->n_headers,
            .scheme = h->scheme,
            .host = h->host,
            .host_is_ipv6 = h->host_is_ipv6,
            .port = h->port,
            .absolute = f->route != NULL,
            .proxy_auth = route_auth(f),
        };
        ssize_t n = soth_h1_write_origin_form(&req, out, sizeof(out), NULL, NULL);
        bool ok = n > 0 && conn_queue_copy(&w->segs, &f->c[SOTH_LEG_UPSTREAM], out, (size_t)n);
        if (!ok) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
    }
    upstream_start(w, f);
    return f->state != FS_CLOSING;
}

static void flow_head_failed(struct worker *w, struct flow *f, ssize_t rc, const char *code,
                             const char *detail)
{
    if (code == NULL)
        code = "malformed";
    if (detail == NULL)
        detail = "malformed request head";
    soth_ev_connect_parse_failed(&f->ev, soth_iov(code, strlen(code)),
                                 soth_iov(detail, strlen(detail)));
    if (rc == SOTH_E_TOO_LARGE && strcmp(code, "line_too_long") != 0)
        flow_answer_text(w, f, 431, "Request Header Fields Too Large", SOTH_CLOSE_PARSE_FAILED,
                         "soth-mitm: request head too large (%s)\n", detail);
    else
        flow_answer_text(w, f, 400, "Bad Request", SOTH_CLOSE_PARSE_FAILED,
                         "soth-mitm: bad request: %s (%s)\n", detail, code);
}

void head_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    char *data = buf_addr(&w->io, bid);
    struct soth_proxy_head h;
    const char *code = NULL, *detail = NULL;
    ssize_t rc;

    if (f->head == NULL) {
        /* Usual case: the whole head in one buffer, parsed where it lies. */
        rc =
            soth_proxy_head_parse(data, len, SOTH_HEAD_STRICT, &w->head_limits, &h, &code, &detail);
        if (rc == SOTH_E_INCOMPLETE) {
            f->head = chunk_get(&w->io);
            if (f->head == NULL) {
                buf_put(&w->io, bid);
                flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
                return;
            }
            memcpy(f->head, data, len);
            f->head_len = len;
            buf_put(&w->io, bid);
            return;
        }
        if (rc < 0) {
            buf_put(&w->io, bid);
            flow_head_failed(w, f, rc, code, detail);
            return;
        }
        if (!flow_on_head(w, f, &h)) {
            buf_put(&w->io, bid);
            return;
        }
        if (f->app != NULL) {
            /* Plain HTTP through the HTTP layer: the head and whatever followed it. */
            relay_plain_head(w, f, data, len);
            buf_put(&w->io, bid);
            return;
        }
        if ((size_t)rc == len) {
            buf_put(&w->io, bid);
            return;
        }
        /* Bytes after the head (an early ClientHello, a body) wait for the upstream as is. */
        if (flow_intercepting(w, f)) {
            intercept_hello_bytes(w, f, data + rc, len - (uint32_t)rc);
            buf_put(&w->io, bid);
            return;
        }
        conn_queue(&w->segs, &f->c[SOTH_LEG_UPSTREAM], data, (uint32_t)rc, len - (uint32_t)rc,
                   (int32_t)bid);
        return;
    }

    /* A head split over reads is gathered in one chunk, bounded by SOTH_HEAD_MAX. */
    uint32_t room = SOTH_HEAD_MAX - f->head_len;
    uint32_t n = len < room ? len : room;
    memcpy(f->head + f->head_len, data, n);
    f->head_len += n;
    rc = soth_proxy_head_parse(f->head, f->head_len, SOTH_HEAD_STRICT, &w->head_limits, &h, &code,
                               &detail);
    if (rc == SOTH_E_INCOMPLETE && f->head_len >= SOTH_HEAD_MAX) {
        rc = SOTH_E_TOO_LARGE;
        code = "head_too_large";
        detail = "request head exceeds the proxy's limit";
    }
    if (rc == SOTH_E_INCOMPLETE) {
        buf_put(&w->io, bid);
        return;
    }
    if (rc < 0) {
        buf_put(&w->io, bid);
        flow_head_failed(w, f, rc, code, detail);
    } else if (flow_on_head(w, f, &h)) {
        char *proxy_head = f->head;
        uint32_t proxy_len = f->head_len;
        f->head = NULL;
        f->head_len = 0;
        if (f->app != NULL) {
            relay_plain_head(w, f, proxy_head, proxy_len);
            if (n < len && f->state != FS_CLOSING && !f->app_done)
                relay_plain_head(w, f, data + n, len - n);
            buf_put(&w->io, bid);
        } else if (flow_intercepting(w, f)) {
            if ((uint32_t)rc < proxy_len)
                intercept_hello_bytes(w, f, proxy_head + rc, proxy_len - (uint32_t)rc);
            if (n < len && f->state != FS_CLOSING)
                intercept_hello_bytes(w, f, data + n, len - n);
            buf_put(&w->io, bid);
        } else {
            if ((uint32_t)rc < proxy_len)
                conn_queue_copy(&w->segs, &f->c[SOTH_LEG_UPSTREAM], proxy_head + rc,
                                proxy_len - (uint32_t)rc);
            if (n < len)
                conn_queue(&w->segs, &f->c[SOTH_LEG_UPSTREAM], data, n, len - n, (int32_t)bid);
            else
                buf_put(&w->io, bid);
        }
        chunk_put(&w->io, proxy_head);
        return;
    } else {
        buf_put(&w->io, bid);
    }
    chunk_put(&w->io, f->head);
    f->head = NULL;
    f->head_len = 0;
}

void head_eof(struct worker *w, struct flow *f, unsigned side)
{
    flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
}

void head_timeout(struct worker *w, struct flow *f)
{
    soth_ev_connect_parse_failed(&f->ev, SOTH_IOV_LIT("request_header_timeout"),
                                 SOTH_IOV_LIT("request head did not arrive in time"));
    flow_answer_text(w, f, 408, "Request Timeout", SOTH_CLOSE_IDLE_TIMEOUT,
                     "soth-mitm: request head not received within %u ms\n",
                     w->cfg->timeouts.request_header_ms);
}
