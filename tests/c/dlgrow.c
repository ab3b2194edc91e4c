/* dlopen after malloc has grown memory: the program's data stays intact. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
int main(void) {
    enum { N = 3 << 20 };
    unsigned char *big = malloc(N);
    for (int i = 0; i < N; i++) big[i] = (unsigned char)(i * 31 + 7);
    void *h = dlopen("libplugin.so", RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    int *value = dlsym(h, "plugin_value");
    int (*add)(int, int) = dlsym(h, "plugin_add");
    *value += 1;
    int ok = 1;
    for (int i = 0; i < N; i++) ok &= big[i] == (unsigned char)(i * 31 + 7);
    unsigned char *more = malloc(N);
    memset(more, 0xAB, N);
    for (int i = 0; i < N; i++) ok &= big[i] == (unsigned char)(i * 31 + 7);
    printf("intact=%d value=%d add=%d more_distinct=%d\n", ok, *value, add(20, 22),
           (more + N <= (unsigned char *)value || more > (unsigned char *)value) &&
           (big + N <= (unsigned char *)value || big > (unsigned char *)value));
    return 0;
}
