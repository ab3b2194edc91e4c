#include <stdio.h>
extern int base_inc(void);
int left(void) { return base_inc() * 10; }
__attribute__((constructor)) static void left_ctor(void) { printf("ctor left\n"); }
