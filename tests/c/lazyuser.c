/* A library opened RTLD_LAZY with a missing function: it loads, calling the
 * function traps, and a later RTLD_GLOBAL dlopen makes it callable. */
#include <stdio.h>
#include <string.h>
#include <dlfcn.h>
int main(int argc, char **argv) {
    void *u = dlopen("libpluginuser.so", RTLD_LAZY);
    if (!u) { printf("dlopen: %s\n", dlerror()); return 1; }
    int (*use)(void) = (int (*)(void))dlsym(u, "use_plugin");
    printf("loaded lazily\n");
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "call-now") == 0) return use();
    if (!dlopen("libplugin.so", RTLD_NOW | RTLD_GLOBAL)) { printf("%s\n", dlerror()); return 1; }
    printf("use_plugin=%d\n", use());
    return 0;
}
