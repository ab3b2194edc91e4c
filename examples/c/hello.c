/*
 * hello.wasm: a PIE main program linked against libgreet.so and libc.so.
 * Run with an optional argument n (default 6) to change the computed value.
 */
#include <stdio.h>
#include <stdlib.h>

#include "greet.h"

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 6;

    printf("hello from a dynamically linked program\n");
    printf("%s = %d\n", greet_describe(n), greet_value(n));
    printf("greet_value called %d time(s)\n", greet_calls());
    return 0;
}
