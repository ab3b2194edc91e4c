/* dlopen a plugin that reads the program's data; the program is linked
 * with -rdynamic since nothing at link time says what the plugin needs. */
#include <dlfcn.h>
#include <stdio.h>

int app_version = 12;
const char app_name[] = "dlappmain";

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "libappver.so";
    void *h = dlopen(path, RTLD_NOW);
    if (!h) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    int (*version)(void) = (int (*)(void))dlsym(h, "plugin_version");
    if (!version) {
        printf("dlsym failed: %s\n", dlerror());
        return 1;
    }
    printf("plugin sees version %d\n", version());
    return dlclose(h);
}
