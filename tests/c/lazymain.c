/* late_fn is unresolved at load time: bound lazily, provided by a later dlopen. */
#include <stdio.h>
#include <string.h>
#include <dlfcn.h>
extern int late_fn(int);
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "call-first") == 0) {
        printf("calling late_fn before it exists\n");
        fflush(stdout);
        return late_fn(1);
    }
    void *h = dlopen("liblate.so", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    printf("late_fn=%d\n", late_fn(6));
    return 0;
}
