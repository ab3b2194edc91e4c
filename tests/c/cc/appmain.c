#include <stdio.h>

int app_version = 304;
const char app_name[] = "appmain";

int plugin_version(void);
const char *plugin_app_name(void);

int main(void) {
    printf("%s sees version %d of %s\n", "libappver.so", plugin_version(), plugin_app_name());
    return 0;
}
