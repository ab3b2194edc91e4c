/* State a run leaves behind: a static counter and a constructor's count.
   A fresh instance set prints "runs=1 ctors=1" every time. */
#include <stdio.h>
static int runs;
static int ctor_runs;
__attribute__((constructor)) static void count_ctor(void) { ctor_runs++; }
int main(void) {
    printf("runs=%d ctors=%d\n", ++runs, ctor_runs);
    return 0;
}
