/* Writes argv[1] x 16 numbered lines (26 bytes each) to stdout: output that fills pipes. */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long kib = argc > 1 ? atol(argv[1]) : 256;
    for (long i = 0; i < kib * 16; i++) printf("line %010ld of output\n", i);
    return 0;
}
