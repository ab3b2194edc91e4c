/* dlopen the library named by argv[1] and call its who(); or print dlerror. */
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlerror: %s\n", dlerror()); return 1; }
    const char *(*who)(void) = (const char *(*)(void))dlsym(h, "who");
    printf("loaded: %s\n", who ? who() : "(no who)");
    return 0;
}
