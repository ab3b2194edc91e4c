/* Bottom of the diamond: one copy of its data must be shared by all users. */
#include <stdio.h>
int base_counter = 0;
int base_inc(void) { return ++base_counter; }
__attribute__((constructor)) static void base_ctor(void) { printf("ctor base\n"); }
