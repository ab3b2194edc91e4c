/* _Thread_local with -g: debug info refers to __tls_base, which libc.so
 * must not export. */
#include <stdio.h>

_Thread_local int counter = 5;
static _Thread_local char tag[8] = "tls";

int main(void) {
    for (int i = 0; i < 3; i++) counter += i;
    printf("%s %d\n", tag, counter);
    return 0;
}
