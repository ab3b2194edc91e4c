/* Loads liblddb.so at start (RUNTIME_PATH $ORIGIN/lddlib), then dlopens
   libldda.so, which needs liblddb.so but has no RUNTIME_PATH: the loaded copy
   is reused, as at load time and as ld.so does. */
#include <stdio.h>
#include "../../toolchain/libdl/wasmrun_dlfcn.h"
extern int lddb_value(void);
int main(void) {
    void *h = dlopen("libldda.so", RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    int (*a)(void) = (int (*)(void))dlsym(h, "ldda_value");
    printf("ldda_value=%d lddb_value=%d\n", a(), lddb_value());
    return 0;
}
