/* A libdl built for toywasm's ABI: load_object with flags 0, resolve_symbol. */
#include <stdio.h>
#include <string.h>
__attribute__((import_module("dyld"), import_name("load_object")))
int dyld_load_object(const char *name, unsigned long len, int flags, void **handle);
__attribute__((import_module("dyld"), import_name("resolve_symbol")))
int dyld_resolve_symbol(void *handle, int symtype, const char *name, unsigned long len,
                        void **addr);
int main(void) {
    void *h, *f, *d;
    const char *lib = "libplugin.so";
    if (dyld_load_object(lib, strlen(lib), 0, &h) != 0) { printf("load failed\n"); return 1; }
    int rf = dyld_resolve_symbol(h, 1, "plugin_add", 10, &f);
    int rd = dyld_resolve_symbol(h, 2, "plugin_value", 12, &d);
    int rx = dyld_resolve_symbol(h, 1, "nothing", 7, &d);
    printf("handle_nonzero=%d add=%d value=%d missing_fails=%d\n", h != 0,
           ((int (*)(int, int))f)(4, 5), *(int *)d, rf == 0 && rd == 0 && rx != 0);
    return 0;
}
