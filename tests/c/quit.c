/* A library function that calls exit(n): `wasmrun call libquit.so quit_with 5` exits 5. */
#include <stdio.h>
#include <stdlib.h>
int quit_with(int n) {
    printf("quitting with %d\n", n);
    exit(n);
}
