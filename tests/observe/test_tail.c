/* soth-mitm-tail, the binary: usage errors, --once/--from-start, filters, following, restarts. */
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "obs_test.h"

extern char **environ;

struct proc {
    pid_t pid;
    int out; /* stdout + stderr */
};

static struct proc spawn_tail(const char *const *args)
{
    const char *argv[16] = {SOTH_TAIL_BIN};
    size_t n = 1;
    for (; args[n - 1] != NULL; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    posix_spawn_file_actions_addclose(&fa, p[0]);
    struct proc pr = {.out = p[0]};
    cr_assert_eq(posix_spawn(&pr.pid, SOTH_TAIL_BIN, &fa, NULL, (char *const *)argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    return pr;
}

/** Read what the process printed until `want` lines arrived or EOF (10 s at most). */
static void read_lines(struct proc *pr, struct text *t, size_t want)
{
    while (t->lines < want) {
        struct pollfd pfd = {.fd = pr->out, .events = POLLIN};
        if (poll(&pfd, 1, 10000) != 1)
            break;
        char buf[65536];
        ssize_t r = read(pr->out, buf, sizeof(buf));
        if (r <= 0)
            break;
        t->p = realloc(t->p, t->len + (size_t)r + 1);
        memcpy(t->p + t->len, buf, (size_t)r);
        t->len += (size_t)r;
        t->p[t->len] = '\0';
        t->lines = 0;
        for (size_t i = 0; i < t->len; i++)
            t->lines += t->p[i] == '\n';
    }
    if (t->p == NULL)
        t->p = calloc(1, 1);
}

static int finish(struct proc *pr)
{
    close(pr->out);
    int st;
    cr_assert_eq(waitpid(pr->pid, &st, 0), pr->pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/** Run to completion; returns the exit status, output in *t. */
static int run_tail(struct text *t, const char *const *args)
{
    struct proc pr = spawn_tail(args);
    memset(t, 0, sizeof(*t));
    read_lines(&pr, t, (size_t)-1);
    return finish(&pr);
}

Test(tail, bad_usage_exits_2)
{
    static const char *const cases[][5] = {
        {NULL},
        {"--nope", "x", NULL},
        {"--type", "nope", "x", NULL},
        {"--type", "", "x", NULL},
        {"--type", "stream_closed,", "x", NULL},
        {"--flow", "abc", "x", NULL},
        {"--flow", "-1", "x", NULL},
        {"--type", NULL},
        {"a", "b", NULL},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(cases); i++) {
        struct text t;
        int rc = run_tail(&t, cases[i]);
        cr_expect_eq(rc, 2, "case %zu: exit %d, output %s", i, rc, t.p);
        cr_expect(strstr(t.p, "usage") != NULL || strstr(t.p, "soth-mitm-tail:") != NULL, "%s",
                  t.p);
        free(t.p);
    }
    struct text t;
    static const char *const missing[] = {"/nonexistent/ring", NULL};
    cr_expect_eq(run_tail(&t, missing), 1);
    free(t.p);
}

Test(tail, once_from_start_and_filters)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    for (unsigned k = 1; k <= 3; k++) {
        struct soth_ev_flow f;
        soth_ev_flow_init(&f, p, k, 0, NULL, 0);
        soth_ev_connect_received(&f, S("CONNECT"), S("a:1"));
        soth_ev_connect_decision(&f, SOTH_ACTION_TUNNEL, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
        soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 0, 0);
    }
    soth_ev_flush(p);
    soth_observe_stop(o);
    struct text t;
    const char *a1[] = {"--from-start", "--once", e.ring, NULL};
    cr_expect_eq(run_tail(&t, a1), 0);
    cr_expect_eq(t.lines, 9, "%s", t.p);
    struct text lib = ring_text(e.ring, NULL);
    cr_expect_str_eq(t.p, lib.p, "the binary prints what the library encodes");
    free(lib.p);
    free(t.p);
    const char *a2[] = {"--once", e.ring, NULL};
    cr_expect_eq(run_tail(&t, a2), 0);
    cr_expect_eq(t.lines, 0, "without --from-start only new events: %s", t.p);
    free(t.p);
    const char *a3[] = {"--from-start", "--once", "--type", "stream_closed,connect_received",
                        "--flow",       "2",      e.ring,   NULL};
    cr_expect_eq(run_tail(&t, a3), 0);
    json_t *arr = text_parse(&t);
    cr_assert_eq(json_array_size(arr), 2, "%s", t.p);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(arr, 0), "type")),
                     "connect_received");
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(arr, 1), "type")),
                     "stream_closed");
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(arr, 1), "flow_id")), 2);
    json_decref(arr);
    free(t.p);
    soth_observe_free(o);
    obs_env_dispose(&e);
}

Test(tail, follows_new_events_and_a_restarted_writer, .timeout = 60)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 1, 0, NULL, 0);
    soth_ev_connect_received(&f, S("CONNECT"), S("before:1"));
    soth_ev_flush(p);
    usleep(100000);
    const char *args[] = {"--type", "connect_received", e.ring, NULL};
    struct proc pr = spawn_tail(args);
    usleep(300000); /* it has mapped the ring and sits at the end */
    soth_ev_connect_received(&f, S("CONNECT"), S("after:1"));
    soth_ev_connect_decision(&f, SOTH_ACTION_TUNNEL, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    soth_ev_flush(p);
    struct text t = {0};
    read_lines(&pr, &t, 1);
    cr_expect_eq(t.lines, 1, "%s", t.p);
    cr_expect(strstr(t.p, "after:1") != NULL && strstr(t.p, "before:1") == NULL, "%s", t.p);
    soth_observe_free(o);

    /* The proxy restarts: a new ring is renamed over the path; the follower moves to it. */
    struct soth_observe *o2 = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o2), 0);
    p = soth_observe_producer(o2, 0);
    soth_ev_flow_init(&f, p, 1, 0, NULL, 0);
    soth_ev_connect_received(&f, S("CONNECT"), S("restarted:1"));
    soth_ev_flush(p);
    read_lines(&pr, &t, 2);
    cr_expect_eq(t.lines, 2, "%s", t.p);
    cr_expect(strstr(t.p, "restarted:1") != NULL, "%s", t.p);
    kill(pr.pid, SIGTERM);
    cr_expect_eq(finish(&pr), 0, "SIGTERM ends a follower cleanly");
    json_decref(text_parse(&t));
    free(t.p);
    soth_observe_free(o2);
    obs_env_dispose(&e);
}
