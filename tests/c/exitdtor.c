/* A library whose destructor calls exit(4). */
#include <stdio.h>
#include <stdlib.h>
int exitdtor_value(void) { return 7; }
__attribute__((destructor)) static void exitdtor_fini(void) {
    printf("exitdtor dtor\n");
    exit(4);
}
