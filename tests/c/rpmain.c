/* Finds its libraries through RUNTIME_PATH: ${ORIGIN}/sub, then $ORIGIN of librp. */
#include <stdio.h>
extern int rp_twice(int);
int main(void) { printf("rp_twice=%d\n", rp_twice(40)); return 0; }
