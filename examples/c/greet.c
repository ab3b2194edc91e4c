/*
 * libgreet.so: a small shared library that itself needs libc.so
 * (snprintf), so loading hello.wasm exercises a NEEDED chain
 * hello.wasm -> libgreet.so -> libc.so and data relocations in a library.
 */
#include <stdio.h>

#include "greet.h"

static int calls;
static char description[64];

int greet_value(int n)
{
    int sum = 0;
    calls++;
    for (int i = 1; i <= n; i++)
        sum += i * i;
    return sum;
}

const char *greet_describe(int n)
{
    snprintf(description, sizeof description, "sum of squares 1..%d", n);
    return description;
}

int greet_calls(void)
{
    return calls;
}
