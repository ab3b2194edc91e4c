#include <stdio.h>
extern int base_inc(void);
int right(void) { return base_inc() * 100; }
__attribute__((constructor)) static void right_ctor(void) { printf("ctor right\n"); }
