/* dlopen of a library whose constructor calls exit(3). */
#include <stdio.h>
#include "../../toolchain/libdl/wasmrun_dlfcn.h"
int main(void) {
    printf("before dlopen\n");
    fflush(stdout);
    void *h = dlopen("libexitctor.so", RTLD_NOW);
    printf("dlopen returned %p\n", h);
    return 0;
}
