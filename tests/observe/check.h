/*
 * CHECK(cond, fmt, ...) for the plain programs that are not Criterion suites (the TSan and NATS
 * tests here, bench/nats/sink_bench): when cond is false it prints
 * "<CHECK_NAME>: <file>:<line>: <message>" to stderr and exits 1. Define CHECK_NAME, the
 * program's name as a string literal, before including this.
 */
#ifndef SOTH_TESTS_CHECK_H
#define SOTH_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#ifndef CHECK_NAME
#error "define CHECK_NAME (the program's name) before including check.h"
#endif

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, CHECK_NAME ": %s:%d: ", __FILE__, __LINE__);                           \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif
