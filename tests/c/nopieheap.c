/* A non-PIE main: libraries must see its own __heap_base/__heap_end, and their
   memory must not collide with its heap: malloc many megabytes, then check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern char __heap_base, __heap_end;
extern char *view_heap_base(void);
extern char *view_heap_end(void);
extern int view_intact(void);
extern int shared_value;
extern const char *greeting;
extern int data_sum(void);
int main_value = 5;
int main(void) {
    printf("heap_base_same=%d heap_end_same=%d\n", view_heap_base() == &__heap_base,
           view_heap_end() == &__heap_end);
    int sum = data_sum();
    size_t chunk = 1 << 20;
    int n = 0;
    for (; n < 48; n++) {
        char *p = malloc(chunk);
        if (!p) break;
        memset(p, 0xAB, chunk);
    }
    printf("allocated=%d MiB view_intact=%d data_intact=%d\n", n, view_intact(),
           data_sum() == sum && shared_value == 42 && strcmp(greeting, "hello from libdata") == 0);
    return 0;
}
