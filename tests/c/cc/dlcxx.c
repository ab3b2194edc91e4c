/* A C program that dlopens a C++ library whose dependency throws: the
 * exception tags must be the program's own, created before any C++ code is
 * loaded (libc.so imports both tags so that they exist from the start). */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
    void *h = dlopen("libcatcher.so", RTLD_NOW);
    if (!h) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    int (*catch_)(int) = (int (*)(int))dlsym(h, "catcher_catch");
    printf("caught in a dlopened library: %d\n", catch_(5));
    return dlclose(h);
}
