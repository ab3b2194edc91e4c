/* Prints what the libwho.so it was linked against says. */
#include <stdio.h>
const char *who(void);
int main(void) {
    printf("who=%s\n", who());
    return 0;
}
