/*
 * Identity and budget checks alone (docs/soth.md): ns per call of what the engine adds to a
 * request. Prints one line per check. Single thread; the budget table has `workers` slots per
 * key (an admission sums them all), as with that many workers.
 *
 *   bench/identity/identity_bench [workers]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "soth/config.h"
#include "soth/policy.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define N 5000000

int main(int argc, char **argv)
{
    unsigned workers = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
    static const char cfg[] =
        "{\"identities\":{\"users\":[{\"id\":\"team-a\",\"user\":\"alice\",\"password_sha256\":"
        "\"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"}],"
        "\"networks\":[{\"id\":\"n1\",\"cidrs\":[\"10.0.0.0/8\"]},{\"id\":\"n2\",\"cidrs\":["
        "\"fd00::/8\"]},{\"id\":\"lo\",\"cidrs\":[\"127.0.0.0/8\"]}]},"
        "\"policy\":{\"default\":\"intercept\",\"rules\":[{\"id\":\"b\",\"host\":\"*.example\","
        "\"action\":\"intercept\",\"identities\":[\"lo\",\"team-a\"],\"budget\":{\"requests\":"
        "1000000000,\"window_s\":60}}]}}";
    struct soth_config *c = NULL;
    char err[256];
    if (soth_config_load_text(cfg, sizeof(cfg) - 1, &c, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct soth_policy *p = soth_policy_new(c, err, sizeof(err));
    struct soth_budget *b = p != NULL ? soth_budget_new(p, workers) : NULL;
    if (b == NULL)
        return 1;
    struct sockaddr_in lo = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &lo.sin_addr);
    volatile int sink = 0;

    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        int id;
        soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&lo, &id);
        sink += id;
    }
    double net = (now_s() - t0) / N * 1e9;

    int n_basic = N / 50;
    t0 = now_s();
    for (int i = 0; i < n_basic; i++) {
        int id;
        soth_policy_identify(p, soth_iov("Basic YWxpY2U6c2VjcmV0", 22), NULL, &id);
        sink += id;
    }
    double basic = (now_s() - t0) / n_basic * 1e9;

    t0 = now_s();
    for (int i = 0; i < N; i++) {
        struct soth_policy_decision d =
            soth_policy_decide_for(p, soth_iov("api.example", 11), 443, 4, NULL);
        sink += d.budget_slot;
    }
    double decide = (now_s() - t0) / N * 1e9;

    uint64_t ms = 1000000;
    t0 = now_s();
    for (int i = 0; i < N; i++) {
        uint32_t ra;
        sink += (int)soth_budget_admit(b, 0, 4, 0, ms + (uint64_t)i / 1000, true, &ra);
    }
    double admit = (now_s() - t0) / N * 1e9;

    printf("identify by network (3 networks): %.1f ns\n", net);
    printf("identify by Basic credentials (SHA-256): %.1f ns\n", basic);
    printf("decide_for (one rule with identities): %.1f ns\n", decide);
    printf("budget admission (%u workers x 8 sub-windows): %.1f ns\n", workers, admit);
    soth_budget_free(b);
    soth_policy_free(p);
    soth_config_unref(c);
    return sink == 42 ? 2 : 0;
}
