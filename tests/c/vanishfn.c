#include <stdio.h>
extern int vanished_fn(void);
extern int still_here(void);
int main(int argc, char **argv) {
    printf("still_here=%d\n", still_here());
    fflush(stdout);
    if (argc > 1) printf("vanished_fn=%d\n", vanished_fn());
    return 0;
}
