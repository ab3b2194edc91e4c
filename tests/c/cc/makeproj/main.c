#include <stdio.h>
#include <stdlib.h>
#include "calc.h"
int main(int argc, char **argv) {
    int a = argc > 2 ? atoi(argv[1]) : 2, b = argc > 2 ? atoi(argv[2]) : 3;
    printf("%d * %d = %d (%s, libadd.a)\n", a, b, mul(a, b), mul_origin);
    return 0;
}
