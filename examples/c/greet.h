/* Interface of libgreet.so, the shared library used by hello.c. */
#ifndef GREET_H
#define GREET_H

/* Sum of the squares 1..n; also counts how often it was called. */
int greet_value(int n);

/* A description of what greet_value(n) computes (static buffer). */
const char *greet_describe(int n);

/* How many times greet_value has run: state kept in libgreet's own data. */
int greet_calls(void);

#endif
