/* Guest dlopen through libdl.so: handles, flags, dlsym, dlclose, dladdr, dlerror. */
#include <stdio.h>
#include <string.h>
#include "../../toolchain/libdl/wasmrun_dlfcn.h"

static void show_error(const char *what) {
    const char *e = dlerror();
    printf("%s: %s\n", what, e ? e : "(no error)");
}

int main(void) {
    void *h = dlopen("libplugin.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) { show_error("dlopen"); return 1; }
    int (*add)(int, int) = (int (*)(int, int))dlsym(h, "plugin_add");
    int *value = (int *)dlsym(h, "plugin_value");
    printf("add=%d value=%d\n", add(2, 3), *value);

    void *h2 = dlopen("libplugin.so", RTLD_NOW | RTLD_LOCAL);
    printf("same_handle=%d\n", h == h2);
    *value = 99;
    printf("shared_data=%d\n", *(int *)dlsym(h2, "plugin_value"));

    /* RTLD_LOCAL: invisible to RTLD_DEFAULT and to libraries opened later. */
    printf("default_lookup=%s\n", dlsym(RTLD_DEFAULT, "plugin_add") ? "found" : "hidden");
    show_error("dlsym default");
    void *u = dlopen("libpluginuser.so", RTLD_NOW);
    printf("user_with_local=%s\n", u ? "loaded" : "failed");
    show_error("dlopen user");

    /* Promote to RTLD_GLOBAL: now visible to both. */
    void *h3 = dlopen("libplugin.so", RTLD_NOW | RTLD_GLOBAL);
    printf("default_lookup=%s\n", dlsym(RTLD_DEFAULT, "plugin_add") ? "found" : "hidden");
    u = dlopen("libpluginuser.so", RTLD_NOW);
    int (*use)(void) = (int (*)(void))dlsym(u, "use_plugin");
    printf("use_plugin=%d\n", use());

    /* dladdr names functions and data. */
    Dl_info info;
    if (dladdr((void *)add, &info))
        printf("dladdr_fn=%s in %s\n", info.dli_sname, strstr(info.dli_fname, "libplugin.so") ? "libplugin.so" : info.dli_fname);
    if (dladdr(value, &info))
        printf("dladdr_data=%s exact=%d\n", info.dli_sname, info.dli_saddr == (void *)value);

    /* Errors name what failed. */
    printf("missing_lib=%s\n", dlopen("libnope.so", RTLD_NOW) ? "loaded" : "NULL");
    show_error("dlopen missing");
    printf("missing_sym=%s\n", dlsym(h, "no_such_symbol") ? "found" : "NULL");
    show_error("dlsym missing");
    printf("escape=%s\n", dlopen("../c/libplugin.so", RTLD_NOW) ? "loaded" : "NULL");
    show_error("dlopen escape");
    printf("absolute=%s\n", dlopen("/etc/passwd", RTLD_NOW) ? "loaded" : "NULL");
    show_error("dlopen absolute");
    printf("noload=%s\n", dlopen("liblate.so", RTLD_NOW | RTLD_NOLOAD) ? "loaded" : "NULL");
    show_error("dlopen noload");
    printf("noload_loaded=%s\n", dlopen("libplugin.so", RTLD_NOLOAD) == h ? "same" : "other");
    printf("no_error_now=%s\n", dlerror() ? "error" : "none");

    /* dlclose: references counted; at zero destructors run and symbols go. */
    dlclose(u);
    dlclose(h);
    dlclose(h2);
    dlclose(h); /* the NOLOAD reference */
    printf("still_open=%s\n", dlsym(RTLD_DEFAULT, "plugin_add") ? "found" : "gone");
    dlclose(h3);
    printf("after_close=%s\n", dlsym(RTLD_DEFAULT, "plugin_add") ? "found" : "gone");
    void *again = dlopen("libplugin.so", RTLD_NOW);
    printf("reopened_value=%d\n", *(int *)dlsym(again, "plugin_value"));
    return 0;
}
