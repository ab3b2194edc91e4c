/* Calls a library function N times (argv[1], default 10 million). */
#include <stdio.h>
#include <stdlib.h>
extern int add_one(int);
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10000000;
    int acc = 0;
    for (int i = 0; i < n; i++) acc = add_one(acc);
    printf("acc=%d\n", acc);
    return 0;
}
