/* Allocates N MiB (argv[1]) in 1 MiB steps; prints how far it got. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
char *volatile keep[4096]; /* volatile: the allocations cannot be optimised away */
int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 64;
    int got = 0;
    for (; got < want && got < 4096; got++) {
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 1, 1 << 20);
        keep[got] = p;
    }
    printf("allocated %d MiB\n", got);
    return got == want ? 0 : 1;
}
